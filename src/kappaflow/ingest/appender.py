"""Encode validated events and append them to the log, each on the partition of its
key. Event times are normalized to epoch milliseconds on the way in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from kappaflow.app import Stream
from kappaflow.errors import InvalidEvents
from kappaflow.events import MAX_EVENT_MS
from kappaflow.events.validate import Problem
from kappaflow.log.base import Log
from kappaflow.log.partitioner import partition_for


class Appender:
    def __init__(self, log: Log, stream: Stream, partitions: int) -> None:
        self.log = log
        self.stream = stream
        self.partitions = partitions
        self._encode = msgspec.json.Encoder().encode
        log.create_topic(stream.name, partitions)

    def append(self, events: Sequence[Any]) -> int:
        """Append ``events``; returns how many. Durable when it returns (per the log)."""
        self.log.append_partitions(self.stream.name, self.encode(events))
        return len(events)

    def encode(self, events: Sequence[Any]) -> dict[int, list[bytes]]:
        """Log records of ``events`` by partition, in order; raises `InvalidEvents` for
        RFC 3339 times outside what epoch milliseconds may hold (1970 to 9999)."""
        by_partition: dict[int, list[bytes]] = {}
        key, time_field = self.stream.key, self.stream.time
        problems: list[Problem] = []
        for index, event in enumerate(events):
            if isinstance(moment := getattr(event, time_field), datetime):
                time_ms = self.stream.time_of(event)
                if not 0 <= time_ms <= MAX_EVENT_MS:
                    reason = f"{moment.isoformat()} is outside 1970-01-01 .. 9999-12-31 UTC"
                    problems.append(Problem(index, time_field, reason))
                    continue
                event = msgspec.structs.replace(event, **{time_field: time_ms})
            partition = partition_for(getattr(event, key), self.partitions)
            by_partition.setdefault(partition, []).append(self._encode(event))
        if problems:
            raise InvalidEvents(problems)
        return by_partition
