"""Tumbling-window counts: per window size, window start and (dimension, value), how
many events fell in. Counts only ever add up, so the operator keeps no state: each
batch adds its counts to an ``add``-mode table in the batch's own transaction, which
makes them effectively-once; late events never reach it (the worker dead-letters
them), so a window's counts are final once the watermark passes its end."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kappaflow.app import Batch, Output
from kappaflow.store.base import Table

WINDOW_SIZES_MS = {"1m": 60_000, "1h": 3_600_000}


def counts_table(name: str) -> Table:
    return Table(
        name,
        columns=(("span", "TEXT"), ("dimension", "TEXT"), ("start_ms", "INTEGER"),
                 ("value", "TEXT"), ("events", "INTEGER")),
        key=("span", "dimension", "start_ms", "value"),
        mode="add",
    )  # fmt: skip


class TumblingCounts:
    """A `Processor` counting events by the (dimension, value) pairs ``dimensions(event)``
    yields, in tumbling windows of ``windows`` (name -> size in ms)."""

    def __init__(
        self,
        table: Table,
        dimensions: Callable[[Any], Iterable[tuple[str, str]]],
        windows: Mapping[str, int] = WINDOW_SIZES_MS,
    ) -> None:
        self.table = table
        self.dimensions = dimensions
        self.windows = dict(windows)

    def initial_state(self) -> None:
        return None

    def encode(self, state: None) -> bytes:
        return b""

    def changed_keys(self, state: None) -> dict[str, bytes | None]:
        return {}

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> None:
        return None

    def process(self, state: None, batch: Batch) -> Output[None]:
        counts: Counter[tuple[str, str, int, str]] = Counter()
        for event, time_ms in zip(batch.events, batch.times_ms, strict=True):
            pairs = list(self.dimensions(event))
            for window, size in self.windows.items():
                start = time_ms - time_ms % size
                for dimension, value in pairs:
                    counts[window, dimension, start, value] += 1
        rows = [(*key, n) for key, n in counts.items()]
        return Output(None, {self.table.name: rows} if rows else {})
