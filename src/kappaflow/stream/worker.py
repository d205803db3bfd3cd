"""The stream worker: owns a set of partitions of one app's stream and, batch after
batch, reads records from the log, decodes them, drops late ones and the retries of
events counted (`Stream.dedup_by`) to the dead-letter table, runs the app's processor,
and commits result rows, processor state, the ids counted and next offsets in one store
transaction. The store, not the log, holds the truth about progress, so a worker killed
at any point resumes exactly where its last commit ended.

When the app's processor raises on a batch, or the store refuses what it made, the
partition is restored from the store and read again in halves down to the record at
fault, which goes to the dead letters; the partition goes on after it, and the worker's
other partitions throughout. A processor that raises on a batch without records halts
its partition, which is restored and tried again after 30 s, then after twice as long
each time, up to 10 minutes, so a fixed app (or a passing cause) resumes it.
"""

from __future__ import annotations

import bisect
import gc
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain, pairwise
from typing import Any

import msgspec
import numpy as np

from kappaflow.app import App, Batch, Processor, Stream, closes_idle
from kappaflow.errors import (
    KappaflowError,
    LogUnavailable,
    OffsetOutOfRange,
    ProcessorFailed,
    StaleOwnership,
    StoreError,
    StoreUnavailable,
)
from kappaflow.events.records import as_array, untagged
from kappaflow.events.registry import check
from kappaflow.log import open_log
from kappaflow.log.base import Log, RecordBatch
from kappaflow.metrics import (
    BATCH_SECONDS,
    DEAD_LETTERS,
    EVENTS_PROCESSED,
    PROCESSOR_FAILURES,
    STATE_KEYS,
    forget_state_keys,
)
from kappaflow.settings import Settings
from kappaflow.store.base import DeadLetter, Halted, PartitionCommit, Store, reason_kind
from kappaflow.stream.assignment import Assignment, Fixed
from kappaflow.stream.dedup import SeenIds, event_ids

log = logging.getLogger("kappaflow.worker")

_META = struct.Struct("<qq")
_NO_EVENT = -(1 << 62)
WAKE_CHECK_S = 0.02
"""How often a waiting worker looks whether to stop or take a new assignment."""
QUIET_CHECK_S = 1.0
"""How often a partition without records has its idle keys timed out."""
RETRY_S, MAX_RETRY_S = 30.0, 600.0
"""When a halted partition is tried again: after 30 s, then twice as long each time."""
MAX_NOTED_ERROR = 1_000
"""Characters of a halting error noted in the store (the log has all of it)."""
SHOWN_ID = 100
"""Characters of an event id a duplicate's reason shows (its record has all of it)."""
RECOVERABLE = (StoreUnavailable, LogUnavailable, OffsetOutOfRange)
"""What a worker waits out, then restores from the store (`_or_recover`)."""


@dataclass
class Halt:
    """A partition whose processor raised: as noted in the store (wall-clock times), and
    when it is tried again (on the worker's clock)."""

    noted: Halted
    retry_at: float


@dataclass
class PartitionRun:
    """What a worker knows of one partition it owns."""

    partition: int
    generation: int
    next_offset: int
    state: Any
    max_event_ms: int = _NO_EVENT
    """Highest event time seen on the partition."""
    floor_ms: int = _NO_EVENT
    """A lower bound the watermark has been raised to after an idle period."""
    last_record_at: float = field(default_factory=time.monotonic)
    idle_flushed: bool = False
    shown: bool = False
    """Whether the log's tools were shown where it starts (see `Log.acknowledge`)."""
    clock_s: float = 0.0
    """The batches' clock (`Batch.clock_ms`): runs while the worker keeps up."""
    polled_at: float | None = None
    quiet_at: float = 0.0
    """When the processor was last given an empty batch to time out idle keys."""
    seen: SeenIds | None = None
    """The ids of the events counted, when the stream de-duplicates."""

    def tick(self, now: float, records: int, full: int) -> int:
        """Advance the clock by the time since the last poll when this read (``records``,
        ``full`` at most) took all the partition had: whatever arrived meanwhile is in
        it, so a key without an event in it had none for that long. A full read may
        leave events of that time unread: it does not advance the clock. Returns it
        in ms."""
        if records < full and self.polled_at is not None:
            self.clock_s += now - self.polled_at
        self.polled_at = now
        return round(self.clock_s * 1000)

    def watermark(self, lateness_ms: int, now_ms: int) -> int:
        """The highest event time, counted no further than the wall clock (so that no
        client's clock drags it ahead), less the lateness; or the floor if higher."""
        return max(self.floor_ms, min(self.max_event_ms, now_ms) - lateness_ms)


@dataclass
class WorkerStats:
    events: int = 0
    late: int = 0
    duplicates: int = 0
    undecodable: int = 0
    refused: int = 0
    commits: int = 0


@dataclass
class Step:
    """One partition's share of a poll: the records read, and what to commit."""

    run: PartitionRun
    batch: RecordBatch
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    commit: PartitionCommit | None = None

    @property
    def records(self) -> int:
        return len(self.batch.values)


class Worker:
    """Processes partitions of ``stream`` with the app's processor: those ``assignment``
    gives it, or a fixed list."""

    def __init__(
        self,
        app: App,
        stream: Stream,
        log: Log,
        store: Store,
        settings: Settings,
        assignment: Assignment | Sequence[int],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.stream = stream
        self.log = log
        self.store = store
        self.settings = settings
        self.group = app.group(stream)
        self.renames = app.renames
        """Result tables the version stores under another name (`App.stored_name`)."""
        self.processor: Processor[Any] = app.processors[stream.name]
        self.judged: bool = getattr(self.processor, "judges_lateness", False)
        """The processor judges lateness per key."""
        self.closes_idle = closes_idle(self.processor)
        """The processor times out idle keys itself, given empty batches."""
        self.key_count: Callable[[Any], int] | None = getattr(self.processor, "key_count", None)
        self.assignment = Fixed(assignment) if isinstance(assignment, Sequence) else assignment
        self.clock = clock
        self.wall_clock = wall_clock
        """Epoch seconds: event times are judged against it."""
        self.lateness_ms = round(settings.allowed_lateness_s * 1000)
        self.future_ms = round(settings.max_future_skew_s * 1000)
        self.idle_ms = round(settings.idle_timeout_s * 1000)
        self.dedup_window_ms = round(settings.dedup_window_s * 1000)
        self.stats = WorkerStats()
        self.runs: dict[int, PartitionRun] = {}
        self.behind = False
        """The last poll read a full batch of some partition: more records are waiting."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        """Who claims the partitions: this process (on Kubernetes, the pod's name)."""
        self.halted: dict[int, Halt] = {}
        """Partitions whose processor raised on an empty batch, until tried again."""
        self.isolating: dict[int, int] = {}
        """Partitions whose batch made the processor or the store fail: how many records
        to read at a time (halved down to the record at fault, then doubled again), each
        committed on its own meanwhile."""
        self._failures: dict[int, int] = {}
        """Partitions whose processor raised on their last batch: how many times running."""
        self._batch_decoder = msgspec.json.Decoder(list[stream.schema])
        self._decoders = {
            version: msgspec.json.Decoder(stream.schema_of(stream.read_as(version)))
            for version in range(1, stream.version + 1)
        }

    def start(self) -> None:
        """Own what the assignment gives (again, after a failure): claim the partitions
        (fencing earlier owners) and restore their state."""
        self.log.create_topic(self.stream.name, self.settings.partitions)
        with closing(open_log(self.settings)) as log:  # the worker's own may be a group member
            check(log, [self.stream])
        self.store.create_tables(self.app.all_tables)
        self.runs = {}
        self.assignment.start(self)

    @property
    def partitions(self) -> list[int]:
        """The partitions owned now."""
        return sorted(self.runs)

    def claim(self, partitions: Sequence[int]) -> dict[int, int]:
        """Claim ``partitions`` (fencing earlier owners), restore their state; returns
        where each continues."""
        for partition, claim in self.store.claim(self.group, partitions, self.owner).items():
            run = PartitionRun(partition, claim.generation, claim.next_offset, None)
            if claim.state is None:
                run.state = self.processor.initial_state()
            else:
                max_event_ms, floor_ms = _META.unpack_from(claim.state)
                # A clock far ahead, kept from before ingest refused such times, is cut
                # back to what ingest accepts now: the partition's events flow again.
                now_ms = self._now_ms()
                run.max_event_ms = min(max_event_ms, now_ms + self.future_ms)
                run.floor_ms = min(floor_ms, now_ms)
                run.state = self.processor.decode(claim.state[_META.size :], claim.keys)
            if self.stream.dedup_by is not None:
                run.seen = SeenIds(self.dedup_window_ms, self.settings.dedup_max_ids, claim.seen)
            run.last_record_at = self.clock()
            self.runs[partition] = run
            self._count_keys(run)
            if partition in self.halted:  # claimed again meanwhile (the store came back)
                self._note_halt(partition, self.halted[partition].noted)
        starts = {p: self.runs[p].next_offset for p in partitions}
        log.info("worker for %s owns partitions %s from offsets %s", self.group,
                 sorted(self.runs), starts)  # fmt: skip
        return starts

    def own(self, partitions: Sequence[int]) -> int:
        """Own exactly ``partitions`` from the next poll on, without a restart: let go
        of the others (all a poll processes is committed before it returns) and claim
        and restore the new ones; the ones kept carry on with their state. Returns how
        many it claimed."""
        wanted = set(partitions)
        lost = [p for p in self.runs if p not in wanted]
        if lost:
            self.release(lost)
        gained = sorted(wanted.difference(self.runs))
        if gained:
            self.claim(gained)
        return len(gained)

    def release(self, partitions: Sequence[int]) -> None:
        """Let go of ``partitions`` (between polls: all processed is committed)."""
        for partition in partitions:
            self.runs.pop(partition, None)
            self.halted.pop(partition, None)
            self._failures.pop(partition, None)
            forget_state_keys(self.group, partition)
        log.info("worker for %s gave up partitions %s", self.group, list(partitions))

    def poll(self) -> int:
        """One cycle over the owned partitions: returns how many records it committed."""
        self.behind = False
        self.assignment.update(self)
        now, now_ms = self.clock(), self._now_ms()
        started = time.perf_counter()
        for lookup in self.app.lookups:
            lookup.refresh(self.store)
        self._retry_halted(now)
        steps = [
            step
            for run in list(self.runs.values())
            if run.partition not in self.halted and (step := self._step(run, now, now_ms))
        ]
        # A partition is shown to the log's tools once claimed, records or not: KEDA counts
        # a partition without a committed group offset as lag, and would never scale to 0.
        shown = {p: run.next_offset for p, run in self.runs.items() if not run.shown}
        committed = self._commit(steps)
        if committed is None:
            return 0
        records = sum(step.records for step in committed)
        if committed:
            shown.update((s.commit.partition, s.commit.next_offset) for s in committed)
            self.stats.commits += 1
            self.stats.events += records
            EVENTS_PROCESSED.labels(self.group).inc(records)
            BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
            for step in committed:
                for letter in step.dead:
                    DEAD_LETTERS.labels(self.group, reason_kind(letter.reason)).inc()
                self._failures.pop(step.commit.partition, None)  # tried again: it went on
                self._count_keys(step.run)
        if shown:
            self.log.acknowledge(self.group, self.stream.name, shown)
            for partition in shown:
                if partition in self.runs:
                    self.runs[partition].shown = True
        return records

    def _step(self, run: PartitionRun, now: float, now_ms: int) -> Step | None:
        """Read and process one partition's next batch: what to commit for it, or None
        when there is nothing to commit (or it halted, or a poison record is being
        isolated)."""
        full = self.settings.batch_max_events
        limit = self.isolating.get(run.partition, full)
        batch = self.log.read(self.stream.name, run.partition, run.next_offset, limit)
        step = Step(run, batch)
        clock_ms = run.tick(now, len(batch.values), min(limit, full))
        try:
            if batch.values:
                run.last_record_at, run.idle_flushed = now, False
                self._process(run, batch, step.rows, step.dead, now_ms, clock_ms)
                self.behind |= len(batch.values) >= full
            elif self._idle(run, now, now_ms):
                watermark = run.watermark(self.lateness_ms, now_ms)
                empty = Batch(run.partition, [], [], [], watermark, clock_ms)
                self._run_processor(run, empty, step.rows, step.dead)
            elif self._quiet(run, now) and self._timed_out(run, now_ms, clock_ms, step.rows):
                pass  # keys of a quiet partition closed for their idle time
            elif batch.next_offset == run.next_offset:
                return None
            # else only the offset moves on, over records no reader gets (Kafka's
            # transaction markers): committed, so the partition's lag reaches 0
        except KappaflowError:
            raise
        except Exception as error:  # the app's processor
            return self._poisoned(run, batch, error, now, "processor")
        run.next_offset = batch.next_offset
        step.commit = self._partition_commit(run)
        return step

    def _partition_commit(self, run: PartitionRun) -> PartitionCommit:
        return PartitionCommit(
            run.partition,
            run.generation,
            run.next_offset,
            _META.pack(run.max_event_ms, run.floor_ms) + self.processor.encode(run.state),
            self.processor.changed_keys(run.state),
            {} if run.seen is None else run.seen.changes(),
        )

    def _count_keys(self, run: PartitionRun) -> None:
        """Show how many keys the partition's state has, if its processor counts them."""
        if self.key_count is not None:
            STATE_KEYS.labels(self.group, str(run.partition)).set(self.key_count(run.state))

    def _commit(self, steps: list[Step]) -> list[Step] | None:
        """Commit the steps in one transaction; the steps committed, or None if the
        worker was fenced and rejoined its group. While a poison record is being
        isolated, each partition commits on its own: one that the store refuses is
        isolated as a processor's failure is (see `_poisoned`)."""
        if not steps:
            return []
        together = [steps] if not self.isolating else [[step] for step in steps]
        committed: list[Step] = []
        for part in together:
            while part:
                rows: dict[str, list[tuple[Any, ...]]] = {}
                for step in part:
                    for table, table_rows in step.rows.items():
                        rows.setdefault(self.renames.get(table, table), []).extend(table_rows)
                dead = [letter for step in part for letter in step.dead]
                try:
                    self.store.commit(self.group, [step.commit for step in part], rows, dead)
                except StaleOwnership as fenced:
                    if not self.assignment.rejoins:
                        raise
                    # The group gave our partitions to another member while we could not
                    # answer it (a pause past the session timeout): the batch is dropped.
                    log.warning("worker for %s was fenced (%s); rejoining the group",
                                self.group, fenced)  # fmt: skip
                    self.start()
                    return None
                except StoreError as refused:
                    if isinstance(refused, StoreUnavailable):
                        raise
                    part = self._refused_by_store(part, refused)
                    continue
                committed += part
                for step in part:
                    self._grow(step)
                part = []
        return committed

    def _refused_by_store(self, part: list[Step], refused: StoreError) -> list[Step]:
        """The store refused a commit of ``part`` for what it holds (a value it cannot
        store): the partitions are restored from the store, and each commits alone from
        then on, halving its batches down to the record at fault, whose dead letter is
        returned to commit instead. A dead letter the store refuses too halts its
        partition."""
        if len(part) > 1:
            partitions = [step.run.partition for step in part]
            log.warning("%s: the store refused a commit of partitions %s (%s); committing "
                        "each alone to find the record at fault", self.group, partitions,
                        refused)  # fmt: skip
            for step in part:
                self.isolating.setdefault(step.run.partition, max(step.records, 1))
            self.claim(partitions)
            return []
        (step,) = part
        if step.dead and not step.rows and step.records == 1:
            self.claim([step.run.partition])
            self._halt(self.runs[step.run.partition], refused, self.clock())
            return []
        isolated = self._poisoned(step.run, step.batch, refused, self.clock(), "store")
        return [] if isolated is None else [isolated]

    def _poisoned(
        self, run: PartitionRun, batch: RecordBatch, error: Exception, now: float, by: str
    ) -> Step | None:
        """A batch of ``run``'s partition made the processor (or the store) fail: its
        state may be half changed, so it is restored from the store. A batch of several
        records is read again in halves; a single record is the poison: it goes to the
        dead letters with the error, and the partition goes on after it. A failure
        without a record (an empty batch timing sessions out) halts the partition."""
        partition = run.partition
        if not batch.values:
            self._halt(run, error, now)
            return None
        self.claim([partition])
        self.behind = True  # its records are read again at once
        if len(batch.values) > 1:
            self.isolating[partition] = len(batch.values) // 2
            log.warning("%s: the %s failed on %d records of partition %d from offset %d (%s: "
                        "%s); reading them again in halves to find the one at fault",
                        self.group, by, len(batch.values), partition, batch.offsets[0],
                        type(error).__name__, error)  # fmt: skip
            return None
        restored = self.runs[partition]
        reason = f"{by}: {type(error).__name__}: {error}".replace("\x00", "\\x00")
        letter = DeadLetter(partition, batch.offsets[0], reason[:MAX_NOTED_ERROR], batch.values[0])
        log.error("%s: partition %d, offset %d: %s; the record goes to the dead letters and "
                  "the partition goes on", self.group, partition, batch.offsets[0], reason,
                  exc_info=error)  # fmt: skip
        PROCESSOR_FAILURES.labels(self.group).inc()
        self.isolating[partition] = 1
        restored.next_offset = batch.next_offset
        step = Step(restored, batch, dead=[letter])
        step.commit = self._partition_commit(restored)
        return step

    def _grow(self, step: Step) -> None:
        """After a commit of a partition being isolated: twice as many records next time
        while its reads are full; a read of less took all there was (the poison is
        behind it), and the partition is read as usual again."""
        partition = step.run.partition
        limit = self.isolating.get(partition)
        if limit is not None:
            if step.records < limit or 2 * limit >= self.settings.batch_max_events:
                del self.isolating[partition]
            else:
                self.isolating[partition] = 2 * limit

    def _halt(self, run: PartitionRun, error: Exception, now: float) -> None:
        """Stop processing ``run``'s partition at its next offset (its state may be half
        changed: it is restored from the store when tried again)."""
        failures = self._failures[run.partition] = self._failures.get(run.partition, 0) + 1
        wait = min(RETRY_S * 2 ** (failures - 1), MAX_RETRY_S)
        reason, since = f"{type(error).__name__}: {error}", time.time()
        noted = Halted(run.next_offset, reason[:MAX_NOTED_ERROR], since, since + wait)
        self.halted[run.partition] = Halt(noted, now + wait)
        PROCESSOR_FAILURES.labels(self.group).inc()
        log.error("%s: the processor raised on partition %d at offset %d (%s); the partition "
                  "halts there, the others go on; tried again in %.0f s", self.group,
                  run.partition, run.next_offset, reason, wait, exc_info=error)  # fmt: skip
        self._note_halt(run.partition, noted)

    def _note_halt(self, partition: int, noted: Halted) -> None:
        """Tell the store (for the dashboard) that ``partition`` halted; its next claim
        clears that."""
        try:
            self.store.record_halt(self.group, partition, self.owner, noted)
        except KappaflowError as failure:
            log.warning("%s: could not note in the store that partition %d halted: %s",
                        self.group, partition, failure)  # fmt: skip

    def _retry_halted(self, now: float) -> None:
        """Restore from the store the halted partitions whose time has come; they are
        processed from their committed offset again (and halt again if it raises)."""
        due = [p for p, halt in self.halted.items() if halt.retry_at <= now]
        if due:
            for partition in due:
                del self.halted[partition]
            self.claim(due)

    def _idle(self, run: PartitionRun, now: float, now_ms: int) -> bool:
        """After ``idle_timeout_s`` without records, the partition's event clock moves
        on by that much (never past the wall clock), so its open windows close instead of
        waiting forever."""
        if run.idle_flushed or run.max_event_ms == _NO_EVENT:
            return False
        if (now - run.last_record_at) * 1000 < self.idle_ms:
            return False
        run.floor_ms = max(run.floor_ms, min(run.max_event_ms + self.idle_ms, now_ms))
        run.idle_flushed = True
        return True

    def _now_ms(self) -> int:
        return round(self.wall_clock() * 1000)

    def _quiet(self, run: PartitionRun, now: float) -> bool:
        """For a processor that times out its keys (`closes_idle`): whether to give it an
        empty batch, at most every `QUIET_CHECK_S` while its partition has no records,
        so that keys that went idle close."""
        if not self.closes_idle or now - max(run.last_record_at, run.quiet_at) < QUIET_CHECK_S:
            return False
        run.quiet_at = now
        return True

    def _timed_out(
        self, run: PartitionRun, now_ms: int, clock_ms: int, rows: dict[str, list[tuple[Any, ...]]]
    ) -> bool:
        """Run an empty batch; whether it closed anything (and is to be committed)."""
        empty = Batch(run.partition, [], [], [], run.watermark(self.lateness_ms, now_ms), clock_ms)
        output = self.processor.process(run.state, empty)
        run.state = output.state
        for table, table_rows in output.rows.items():
            rows.setdefault(table, []).extend(table_rows)
        return bool(output.rows)

    def _process(
        self,
        run: PartitionRun,
        records: RecordBatch,
        rows: dict[str, list[tuple[Any, ...]]],
        dead: list[DeadLetter],
        now_ms: int,
        clock_ms: int,
    ) -> None:
        offsets, values, events = self._decode(run.partition, records, dead)
        ids: list[str | None] = []
        if run.seen is not None:
            offsets, values, events, ids = self._unseen(run, offsets, values, events, dead)
        counted, with_ids = len(dead), offsets  # records dead-lettered from here on: not counted
        events, times = self.stream.read(events)
        late = [] if self.judged else _late(times, run.max_event_ms, run.floor_ms,
                                            self.lateness_ms, now_ms)  # fmt: skip
        if late:
            for i, watermark in late:
                reason = f"late: event time {times[i]} is below the watermark {watermark}"
                dead.append(DeadLetter(run.partition, offsets[i], reason, values[i]))
            self.stats.late += len(late)
            offsets, events, times = _without([i for i, _ in late], offsets, events, times)
        if times:
            run.max_event_ms = max(run.max_event_ms, max(times))
        watermark = run.watermark(self.lateness_ms, now_ms)
        batch = Batch(run.partition, offsets, events, times, watermark, clock_ms)
        self._run_processor(run, batch, rows, dead, records)
        if run.seen is not None:
            for letter in dead[counted:] if ids else ():
                ids[bisect.bisect_left(with_ids, letter.offset)] = None
            run.seen.add(ids, min(run.max_event_ms, now_ms))

    def _unseen(
        self,
        run: PartitionRun,
        offsets: list[int],
        values: list[bytes],
        events: list[Any],
        dead: list[DeadLetter],
    ) -> tuple[list[int], list[bytes], list[Any], list[str | None]]:
        """The records but the duplicates, which go to ``dead``: those whose key and
        id (`Stream.dedup_by`) the partition counted, or an earlier record of the batch
        has; and the id of each record kept (see `event_ids`: none if no record has
        one)."""
        assert run.seen is not None and self.stream.dedup_by is not None
        ids = event_ids(events, self.stream.key, self.stream.dedup_by)
        repeats = run.seen.repeats(ids)
        if repeats:
            field = self.stream.dedup_by
            for i in repeats:
                id_ = _shown(getattr(events[i], field))
                reason = f"duplicate: {field} {id_} of an earlier event of its key"
                dead.append(DeadLetter(run.partition, offsets[i], reason, values[i]))
            self.stats.duplicates += len(repeats)
            offsets, values, events, ids = _without(repeats, offsets, values, events, ids)
        return offsets, values, events, ids

    def _run_processor(
        self,
        run: PartitionRun,
        batch: Batch,
        rows: dict[str, list[tuple[Any, ...]]],
        dead: list[DeadLetter],
        records: RecordBatch | None = None,
    ) -> None:
        output = self.processor.process(run.state, batch)
        run.state = output.state
        for table, table_rows in output.rows.items():
            rows.setdefault(table, []).extend(table_rows)
        if output.dead_letters and records is not None:
            for offset, reason in output.dead_letters:
                value = records.values[bisect.bisect_left(records.offsets, offset)]
                dead.append(DeadLetter(run.partition, offset, reason, value))
            self.stats.refused += len(output.dead_letters)

    def _decode(
        self, partition: int, records: RecordBatch, dead: list[DeadLetter]
    ) -> tuple[list[int], list[bytes], list[Any]]:
        """The offsets, values and events (of the current version) of the records that
        decode, in one call if all of them are of the current version and decode; the
        others go to ``dead``."""
        offsets, values, stream = records.offsets, records.values, self.stream
        array = as_array(values, stream.version)
        try:
            events = [] if array is None else self._batch_decoder.decode(array)
            if len(events) == len(values):
                return offsets, values, events
        except msgspec.DecodeError:
            pass
        decoded: tuple[list[int], list[bytes], list[Any]] = ([], [], [])
        for offset, value in zip(offsets, values, strict=True):
            try:
                event = self._decode_one(value)
            except Exception as error:
                dead.append(DeadLetter(partition, offset, f"undecodable: {error}", value))
                self.stats.undecodable += 1
                continue
            for column, item in zip(decoded, (offset, value, event), strict=True):
                column.append(item)
        return decoded

    def _decode_one(self, value: bytes) -> Any:
        """The event of a record, upcast to the current version; raises what names why
        it cannot be."""
        version, body = untagged(value)
        decoder = self._decoders.get(version)
        if decoder is None:
            raise ValueError(f"the record is of version {version} of the schema, and the "
                             f"stream declares versions 1 to {self.stream.version}")  # fmt: skip
        event = decoder.decode(body)
        if version == self.stream.version:
            return event
        try:
            (event,) = self.stream.upcast(version, [event])
        except Exception as error:
            raise ValueError(f"upcasting from version {version} raised {error!r}") from error
        if type(event) is not self.stream.schema:
            raise ValueError(f"upcasting from version {version} gave a {type(event).__name__}, "
                             f"not a {self.stream.schema.__name__}")  # fmt: skip
        return event

    def run(self, should_stop: Callable[[], bool], until_caught_up: bool = False) -> None:
        """Poll until ``should_stop()``; with ``until_caught_up``, also stop once every
        owned partition is processed up to the log's end."""
        run_workers([self], should_stop, until_caught_up)

    def caught_up(self) -> bool:
        ends = self.log.end_offsets(self.stream.name)
        return all(run.next_offset >= ends[p] for p, run in self.runs.items())


def _without(dropped: Sequence[int], *columns: list[Any]) -> list[list[Any]]:
    """``columns`` without their items at the indexes ``dropped`` (ascending): the
    slices between them, joined, not a loop in Python over every item."""
    spans = list(pairwise([-1, *dropped, len(columns[0])]))
    return [list(chain.from_iterable(column[a + 1 : b] for a, b in spans)) for column in columns]


def _shown(id_: str) -> str:
    """An id as a reason shows it: quoted, and cut after `SHOWN_ID` characters."""
    return repr(id_) if len(id_) <= SHOWN_ID else repr(id_[:SHOWN_ID]) + "..."


def _late(
    times: list[int], max_event_ms: int, floor_ms: int, lateness_ms: int, now_ms: int
) -> list[tuple[int, int]]:
    """(index, watermark) of each event of a batch below the watermark it meets: the
    highest event time before it (earlier batches included), counted no further than
    ``now_ms``, less the lateness; or the floor if higher. In float64: exact for event
    times below 2**53 ms (year 287,396), and any integer an event carries converts."""
    times_ = np.array(times, dtype=np.float64)
    highest = np.maximum.accumulate(np.concatenate(([max_event_ms], times_[:-1])))
    watermarks = np.maximum(np.minimum(highest, now_ms) - lateness_ms, floor_ms)
    late = np.flatnonzero(times_ < watermarks).tolist()
    return [(i, int(watermarks[i])) for i in late]


def run_workers(
    workers: Sequence[Worker],
    should_stop: Callable[[], bool],
    until_caught_up: bool = False,
) -> None:
    """Poll several workers (one per app stream) in turn, pausing when none had work
    (or until a change of their assignment waits)."""
    # Session state is many small long-lived containers; at the default thresholds the
    # cycle collector rescans them so often that it costs 10-15% of a worker's time. A
    # worker that keeps up adds most of its objects to that state, and each of its young
    # collections still costs tens of ms: it runs one per 200,000 new objects.
    gc.set_threshold(200_000, 20, 100)
    pause = min(w.settings.poll_interval_ms for w in workers) / 1000
    spacing = min(w.settings.commit_interval_ms for w in workers) / 1000
    while not should_stop():
        started = time.monotonic()
        if sum(_or_recover(worker, should_stop, worker.poll) for worker in workers):
            if any(worker.behind for worker in workers):
                continue  # one that read a full batch is behind: it polls again at once
            # Workers that keep up wait, so that their next commits carry more events.
            wait = spacing - (time.monotonic() - started)
        else:
            wait = pause
        if until_caught_up:
            for worker in workers:
                for partition, halt in worker.halted.items():
                    noted = halt.noted
                    raise ProcessorFailed(f"{worker.group}: partition {partition} halted at "
                                          f"offset {noted.offset}: {noted.error}")  # fmt: skip
            if all(worker.caught_up() for worker in workers):
                return
        _sleep(wait, should_stop, workers)


def _sleep(seconds: float, should_stop: Callable[[], bool], workers: Sequence[Worker]) -> None:
    """Sleep ``seconds``, or less if asked to stop or a change of assignment waits: a
    worker takes it, or stops, within a few ms, not after the commit interval."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if should_stop() or any(worker.assignment.pending() for worker in workers):
            return
        time.sleep(min(left, WAKE_CHECK_S))


def _or_recover(worker: Worker, should_stop: Callable[[], bool], step: Callable[[], int]) -> int:
    """Run ``step`` (a poll, say); when the store is unreachable (a commit's outcome is
    then unknown) or the log cannot be read on (a broker gone, a Kafka consumer that
    stopped fetching a partition as its leader moved), wait with backoff and start over
    from what the store holds: claim, restore, read on."""
    try:
        return step()
    except RECOVERABLE as failure:
        delay = 0.1
        while not should_stop():
            log.warning("%s: %s; restoring from the store in %.1f s", worker.group, failure, delay)
            time.sleep(delay)
            try:
                worker.start()
                return 0
            except RECOVERABLE as again:
                failure, delay = again, min(delay * 2, 5.0)
        return 0
