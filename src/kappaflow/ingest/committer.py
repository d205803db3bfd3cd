"""Group commit: appends of concurrent requests share one write and one fsync per
partition (on Kafka, one round trip for all partitions). While a write runs in a
thread, new requests queue; the next write takes them all. Each request's future
resolves once its records are durable."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from kappaflow.log.base import Log

Records = dict[int, list[bytes]]
Queued = tuple[str, Records, "asyncio.Future[None]"]


class GroupCommitter:
    def __init__(self, log: Log) -> None:
        self.log = log
        self._queue: list[Queued] = []
        self._writing: asyncio.Task[None] | None = None

    async def append(self, stream: str, records: Records) -> None:
        """Return once ``records`` (partition -> values) are durably in the log; raise
        the log's error otherwise."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((stream, records, future))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_queued())
        await future

    async def drain(self) -> None:
        """Wait for every queued append (on shutdown)."""
        while self._writing is not None and not self._writing.done():
            await self._writing

    async def _write_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            failures = await asyncio.to_thread(self._write, batch)
            for stream, _, future in batch:
                if future.done():
                    continue
                if stream in failures:
                    future.set_exception(failures[stream])
                else:
                    future.set_result(None)

    def _write(self, batch: list[Queued]) -> dict[str, Exception]:
        """Append each stream's records of the whole batch in one call (all or nothing
        on the embedded log); returns the failures by stream: the requests of the other
        streams succeed."""
        merged: dict[str, Records] = defaultdict(lambda: defaultdict(list))
        for stream, records, _ in batch:
            for partition, values in records.items():
                merged[stream][partition].extend(values)
        failures: dict[str, Exception] = {}
        for stream, records in merged.items():
            try:
                self.log.append_partitions(stream, records)
            except Exception as error:
                failures[stream] = error
        return failures
