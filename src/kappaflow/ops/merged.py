"""Windows of groups spread over partitions: each batch's partial measures, which the
store merges into the rows (an ``add`` table with per-column merges)."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from typing import Any

from kappaflow.app import Batch, Output, Stateless
from kappaflow.ops.grouping import RowsOf, grouped, parts, window_keys
from kappaflow.ops.measures import Measure, counted
from kappaflow.ops.windows import Hopping, Tumbling


class MergedWindows(Stateless):
    """Each batch's partial measures of each group and tumbling or hopping window, to
    be merged by the store. Hopping windows are computed by panes, the spans between
    two window starts: the measures once per group and pane, then each pane's merged
    into the windows that hold it, as the store merges partial rows."""

    def __init__(
        self, window: Tumbling | Hopping, by: tuple[str, ...], measures: list[Measure],
        table: str, rows_of: RowsOf,
    ) -> None:  # fmt: skip
        self.window, self.measures, self.table, self.rows_of = window, measures, table, rows_of
        self.by, self.parts = by, parts(by)
        self.counts = all(measure.add is counted for measure in measures)
        self.pane = window if isinstance(window, Tumbling) else Tumbling(window.every_ms)
        self.merges = [MERGES[measure.merge] for measure in measures]  # type: ignore[index]

    def process(self, state: None, batch: Batch) -> Output[None]:
        size, adds = self.window.size_ms, [measure.add for measure in self.measures]
        if self.counts:  # the commonest aggregate, at the cost of the counting alone
            width = len(adds)
            keys = window_keys(batch, self.by, self.pane)[0]
            partials = {key: [n] * width for key, n in Counter(keys).items()}
        else:
            runs_of = grouped(batch, self.by, self.pane, self.measures)
            partials = {key: [add(None, run) for add, run in zip(adds, runs, strict=True)]
                        for key, runs in runs_of.items()}  # fmt: skip
        if self.pane is not self.window:
            partials = self._windows(partials)
        rows_of, parts_of = self.rows_of, self.parts
        rows: list[tuple] = []
        for (group, start), accs in partials.items():
            rows += rows_of(parts_of(group), start, start + size, accs)
        return Output(None, {self.table: rows} if rows else {})

    def _windows(self, panes: dict[tuple[Any, int], list[Any]]) -> dict[tuple[Any, int], list[Any]]:
        """The measures of each group and window, merged from its panes'."""
        windows: dict[tuple[Any, int], list[Any]] = {}
        starts, merges = self.window.starts, self.merges
        for (group, pane), partial in panes.items():
            for start in starts(pane):
                accs = windows.get(key := (group, start))
                windows[key] = partial if accs is None else list(map(_merge, merges, accs, partial))
        return windows


MERGES: dict[str, Callable[[Any, Any], Any]] = {"add": operator.add, "min": min, "max": max}
"""Each merge of partial results (`Measure.merge`), as the store does it."""


def _merge(merge: Callable[[Any, Any], Any], stored: Any, written: Any) -> Any:
    return merge(stored, written)
