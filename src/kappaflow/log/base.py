"""The Log protocol: topics of partitions, each an append-only sequence of records
addressed by offset. Backends live beside this module; only `open_log` names them."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple, Protocol, TypeVar

from kappaflow.errors import LogError

T = TypeVar("T")
NEW_TOPIC_S = 30.0
"""How long a topic just created may stay unknown to a broker."""


class RecordBatch(NamedTuple):
    """Records read from one partition, in offset order."""

    offsets: list[int]
    values: list[bytes]
    next_offset: int
    """Where the next read of this partition starts."""


class Log(Protocol):
    def create_topic(self, topic: str, partitions: int, forever: bool = False) -> None:
        """Create the topic if it does not exist; an existing topic must match. With
        ``forever``, no retention deletes its records."""

    def partitions(self, topic: str) -> int:
        """Number of partitions of an existing topic."""

    def append(self, topic: str, partition: int, values: Sequence[bytes]) -> int:
        """Append records durably; returns the offset of the first one."""

    def append_partitions(
        self, topic: str, records: Mapping[int, Sequence[bytes]]
    ) -> dict[int, int]:
        """Append records to several partitions (partition -> values), durably once it
        returns; the offset of each partition's first record. All or nothing: when it
        fails, none of the records is served, and callers retry the whole."""

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> RecordBatch:
        """Up to ``max_records`` durable records starting at ``offset`` (maybe none).
        Offsets may hold no record a reader gets (Kafka's transaction markers): the
        batch's ``next_offset`` steps over them, with or without records."""

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended record will get."""

    def start_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the lowest offset still held (retention deletes below it)."""

    def acknowledge(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Show ``group``'s progress (next offset per partition) to the log: Kafka's
        consumer group offsets, which KEDA reads; the embedded log's own record, which
        its retention reads. The store stays the truth: this is a copy, written after
        each store commit, so never ahead of it."""

    def acknowledged(self, group: str, topic: str) -> dict[int, int]:
        """What ``group`` last acknowledged (see `acknowledge`), of the partitions it
        did: how far it has processed, from the log alone (ingest's backlog bound)."""

    def apply_retention(
        self, topic: str, groups: Collection[str], max_bytes: int, max_age_s: float
    ) -> int:
        """Delete what is over the size (per partition) or age limit and every one of
        ``groups`` acknowledged (0: no limit); returns how many segments went. A log
        that applies retention of its own (Kafka's brokers) does nothing."""

    def close(self) -> None: ...


def once_known(read: Callable[[], T], timeout_s: float = NEW_TOPIC_S) -> T:
    """``read()`` (of a topic's offsets, say), called again while it raises `LogError`
    for up to ``timeout_s``: on Kafka, a topic just created is not known to every
    broker at once."""
    deadline, delay = time.monotonic() + timeout_s, 0.1
    while True:
        try:
            return read()
        except LogError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
