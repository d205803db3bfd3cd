"""Append validated events to the log, each on the partition of its key, as the JSON it
came as (`kappaflow.events.records`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import msgspec

from kappaflow.app import Stream
from kappaflow.errors import InvalidEvents
from kappaflow.events import MAX_EVENT_MS, event_time_ms
from kappaflow.events.records import tagged
from kappaflow.events.validate import Problem
from kappaflow.log.base import Log
from kappaflow.log.partitioner import partitions_for


class Appender:
    def __init__(
        self,
        log: Log,
        stream: Stream,
        partitions: int,
        max_future_skew_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``max_future_skew_s``: refuse event times more than this ahead of ``clock``
        (epoch seconds); None accepts any."""
        self.log = log
        self.stream = stream
        self.partitions = partitions
        self.max_future_skew_s, self.clock = max_future_skew_s, clock
        self._encode = msgspec.json.Encoder().encode
        log.create_topic(stream.name, partitions)

    def append(self, events: Sequence[Any]) -> int:
        """Append ``events`` of the current version, encoded; returns how many. Durable
        when it returns (per the log)."""
        self.log.append_partitions(self.stream.name, self.encode(events))
        return len(events)

    def encode(
        self, events: Sequence[Any], records: Sequence[bytes] | None = None, version: int = 0
    ) -> dict[int, list[bytes]]:
        """Log records by partition, in order: ``records`` (each event's JSON as it came)
        of ``version`` (default: the current one), or ``events`` encoded. Raises
        `InvalidEvents` for RFC 3339 times outside what epoch milliseconds may hold
        (1970 to 9999), and for times too far ahead of the clock."""
        self._refuse_outside_epoch(events)
        if self.max_future_skew_s is not None and events:
            self._refuse_future(events, self.max_future_skew_s)
        keys = list(map(attrgetter(self.stream.key), events))
        if records is None:
            records = list(map(self._encode, events))
        records = tagged(version or self.stream.version, records)
        by_partition: dict[int, list[bytes]] = {}
        for partition, record in zip(partitions_for(keys, self.partitions), records, strict=True):
            by_partition.setdefault(partition, []).append(record)
        return by_partition

    def _refuse_future(self, events: Sequence[Any], skew_s: float) -> None:
        now_ms = round(self.clock() * 1000)
        times = self.stream.times_ms(events)
        limit = now_ms + round(skew_s * 1000)
        if max(times) <= limit:
            return
        problems = [
            Problem(index, self.stream.time, f"{_iso(time_ms)} is {(time_ms - now_ms) / 1000:,.0f} "
                    f"s ahead of the server's clock ({_iso(now_ms)}); at most {skew_s:g} s is "
                    "accepted (KAPPAFLOW_MAX_FUTURE_SKEW_S)")
            for index, time_ms in enumerate(times) if time_ms > limit
        ]  # fmt: skip
        raise InvalidEvents(problems)

    def _refuse_outside_epoch(self, events: Sequence[Any]) -> None:
        """Raise `InvalidEvents` for RFC 3339 times before 1970 or after 9999."""
        name = self.stream.time
        problems = [
            Problem(index, name, f"{moment.isoformat()} is outside 1970-01-01 .. 9999-12-31 UTC")
            for index, moment in enumerate(map(attrgetter(name), events))
            if isinstance(moment, datetime) and not 0 <= event_time_ms(moment) <= MAX_EVENT_MS
        ]
        if problems:
            raise InvalidEvents(problems)


def _iso(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).isoformat(timespec="milliseconds")
