"""De-duplication of client retries: the ids of the events a partition has counted, by
stream key, remembered for a window of the partition's event time (and up to a number
of ids), with what changed since the last commit, which the store keeps with the
partition's offsets (see `Stream.dedup_by`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np


def event_ids(events: Sequence[Any], key: str, field: str) -> list[str | None]:
    """Each event's id (its ``field``, a string or None) together with its stream
    ``key``, as one string, or None when it has no id: an id names one event among
    those of its key. The id's length comes first, so that no id runs into a key. An
    empty list when no event has an id."""
    ids = list(map(attrgetter(field), events))
    if ids.count(None) == len(ids):
        return []
    keys = list(map(attrgetter(key), events))
    return [
        None if id_ is None else f"{len(id_)}:{id_}{key_}"
        for id_, key_ in zip(ids, keys, strict=True)
    ]


class SeenIds:
    """The ids (see `event_ids`) a partition counted, each with the partition's event
    time (ms) when it was counted: an id is remembered while the partition's event time
    is at most ``window_ms`` past that, and at most ``max_ids`` of them, the oldest
    forgotten first. ``seen`` restores those a store kept."""

    def __init__(self, window_ms: int, max_ids: int, seen: Mapping[str, int] = {}) -> None:
        self.window_ms, self.max_ids = window_ms, max_ids
        self._at = dict(sorted(seen.items(), key=itemgetter(1)))
        """Each id and when it was counted, oldest first."""
        self._changed: dict[str, int | None] = {}

    def __len__(self) -> int:
        return len(self._at)

    def repeats(self, ids: Sequence[str | None]) -> list[int]:
        """The indexes of ``ids`` counted before, or given earlier in ``ids``; an event
        without an id (None) is never a repeat. Found in bulk, without a loop in Python
        over the ids: under a steady rate of retries, most batches have some."""
        count, nones = len(ids), ids.count(None)
        if nones == count:
            return []
        # Each id's first index: the ids go in reversed, and dict() keeps an id's last value.
        first = dict(zip(reversed(ids), range(count - 1, -1, -1), strict=True))
        first.pop(None, None)
        again = self._at.keys() & first.keys()
        if len(first) + nones == count and not again:
            return []
        repeat = np.ones(count, bool)
        repeat[np.fromiter(first.values(), np.int64, len(first))] = False
        if nones:
            repeat[np.equal(np.array(ids, dtype=object), None)] = False
        repeat[[first[id_] for id_ in again]] = True
        return np.flatnonzero(repeat).tolist()

    def add(self, ids: Iterable[str | None], now_ms: int) -> None:
        """Remember ``ids`` (none of them remembered yet; None is skipped) as counted
        at ``now_ms``, the partition's event time, which never goes back; then forget
        the ids counted more than the window before it, and the oldest beyond
        ``max_ids``."""
        added: dict[Any, int] = dict.fromkeys(ids, now_ms)
        added.pop(None, None)
        self._at.update(added)
        self._changed.update(added)
        cutoff, excess = now_ms - self.window_ms, len(self._at) - self.max_ids
        forgotten = []
        for id_, when in self._at.items():  # oldest first
            if when >= cutoff and len(forgotten) >= excess:
                break
            forgotten.append(id_)
        for id_ in forgotten:
            del self._at[id_]
            self._changed[id_] = None

    def changes(self) -> dict[str, int | None]:
        """The ids counted (with when) or forgotten (None) since the last call."""
        changed, self._changed = self._changed, {}
        return changed
