"""Keys by the time each is due, on a clock the caller keeps (ms): the session windows'
idle keys, keyed state's keys to expire."""

from __future__ import annotations

import heapq

BUCKET_BITS = 6


class DueKeys:
    """Keys by the time (ms) at which each is due: a timer wheel of buckets of 64 ms,
    found through a heap of bucket numbers (a heap of every key's entry costs more per
    entry). Each key has at most one valid entry (``scheduled``); scheduling it again
    leaves the old entry stale."""

    def __init__(self) -> None:
        self.scheduled: dict[str, int] = {}
        self._buckets: dict[int, list[tuple[int, str]]] = {}
        self._order: list[int] = []

    def schedule(self, key: str, due: int) -> None:
        """Make ``key`` due at ``due`` instead of when it was due."""
        if self.scheduled.get(key) == due:
            return
        self.scheduled[key] = due
        bucket = due >> BUCKET_BITS
        entries = self._buckets.get(bucket)
        if entries is None:
            self._buckets[bucket] = [(due, key)]
            heapq.heappush(self._order, bucket)
        else:
            entries.append((due, key))

    def pop(self, watermark: int) -> list[str]:
        """The keys due at or before ``watermark``, no longer scheduled."""
        due_keys: list[str] = []
        order, buckets, scheduled = self._order, self._buckets, self.scheduled
        while order and order[0] << BUCKET_BITS <= watermark:
            bucket = heapq.heappop(order)
            entries = buckets.pop(bucket)
            inside = (bucket + 1) << BUCKET_BITS > watermark + 1
            if inside:  # the watermark ends inside this bucket: keep what it has not reached
                later = [entry for entry in entries if entry[0] > watermark]
                if later:
                    buckets[bucket] = later
                    heapq.heappush(order, bucket)
                    entries = [entry for entry in entries if entry[0] <= watermark]
            for due, key in entries:
                if scheduled.get(key) == due:
                    del scheduled[key]
                    due_keys.append(key)
            if inside:
                break
        return due_keys
