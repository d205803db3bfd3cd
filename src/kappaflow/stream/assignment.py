"""Which partitions a worker owns, and how that changes while it runs. A worker asks its
`Assignment` when it starts (and starts over, after the store failed) and before each
poll, and claims or lets go of partitions as told, without knowing which kind it has:

- `Fixed`: the same partitions throughout (``kappaflow worker --partitions``).
- `Shares`: the partitions a share file lists, as ``kappaflow up`` changes them.
- `KafkaGroup`: the partitions Kafka's consumer group assigns (as when KEDA scales
  worker pods).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from kappaflow.errors import KappaflowError
from kappaflow.log.base import Log
from kappaflow.stream.shares import ShareFile

if TYPE_CHECKING:
    from kappaflow.log.kafka import KafkaLog
    from kappaflow.stream.worker import Worker


class Assignment(Protocol):
    rejoins: bool
    """Whether a worker the store fenced (its partitions claimed by another) starts over
    and is assigned partitions again, instead of failing: a group moves partitions away
    from a member that stopped answering it."""

    def start(self, worker: Worker) -> None:
        """Have ``worker``, which owns nothing, own what is assigned to it now (its
        `Worker.claim`), or from when the assignment says (a group's rebalance)."""

    def update(self, worker: Worker) -> None:
        """Before a poll: have ``worker`` take over what changed since (`Worker.own`,
        `Worker.claim`, `Worker.release`). All it processed is committed by then."""

    def pending(self) -> bool:
        """Whether a change waits, which a worker waiting for records wakes to take."""


class Fixed:
    """The same partitions throughout."""

    rejoins = False

    def __init__(self, partitions: Sequence[int]) -> None:
        self.partitions = sorted(partitions)

    def start(self, worker: Worker) -> None:
        worker.claim(self.partitions)

    def update(self, worker: Worker) -> None:
        pass

    def pending(self) -> bool:
        return False


class Shares:
    """The partitions a share file lists (see `kappaflow.stream.shares`), for every
    worker of a process that shares this object. The file is read again once each of
    them took the last request over, and ``.owned`` written once each owns it: what
    it says they let go of, none of them owns any more."""

    rejoins = False

    def __init__(self, file: ShareFile, asked: Sequence[int] = ()) -> None:
        """``asked``: what the file asked for, if already read."""
        self.file = file
        self.asked = sorted(asked)
        self.workers: list[Worker] = []
        self.untaken: list[Worker] = []
        """The workers that do not own ``asked`` yet."""
        self.acknowledged: list[int] | None = None

    def start(self, worker: Worker) -> None:
        if worker not in self.workers:
            self.workers.append(worker)
        worker.claim(self.asked)
        if worker in self.untaken:
            self.untaken.remove(worker)

    def update(self, worker: Worker) -> None:
        if not self.untaken and (asked := self.file.changed()) is not None:
            self.asked, self.untaken = asked, list(self.workers)
        if worker in self.untaken:
            worker.own(self.asked)
            self.untaken.remove(worker)
        if not self.untaken and self.acknowledged != self.asked:
            self.file.acknowledge(self.asked)
            self.acknowledged = self.asked

    def pending(self) -> bool:
        return self.file.pending()


class NotKafka(KappaflowError):
    """A consumer group was asked of a log other than Kafka."""


class KafkaGroup:
    """The partitions the log's consumer group assigns to the worker (Kafka,
    cooperative-sticky): claimed and restored when assigned, let go of when revoked,
    both between polls. One per worker: each is a member of its stream's group, through
    a log of its own."""

    rejoins = True

    def __init__(self, log: Log) -> None:
        from kappaflow.log.kafka import KafkaLog

        if not isinstance(log, KafkaLog):
            raise NotKafka(f"a consumer group assigns partitions on Kafka only, not on "
                           f"{type(log).__name__}: set KAPPAFLOW_LOG=kafka")  # fmt: skip
        self.log: KafkaLog = log

    def start(self, worker: Worker) -> None:
        self.log.join(worker.stream.name, worker.group, worker.claim, worker.release)

    def update(self, worker: Worker) -> None:
        self.log.rebalance(worker.settings.batch_max_events)

    def pending(self) -> bool:
        return False
