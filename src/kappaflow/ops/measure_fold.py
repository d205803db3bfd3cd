"""Session windows of measures: the `SessionFold` that `Aggregate` gives the core's
`SessionWindows`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kappaflow.app import Rows
from kappaflow.ops.grouping import group_of_key, state_key
from kappaflow.ops.shape import key_getter, value_getter

if TYPE_CHECKING:
    from kappaflow.ops.aggregate import Aggregate


class MeasureFold:
    """A `SessionFold` of measures: a session is [start, end, accumulators]; an item is
    (time, offset, place among the events of its offset, the measures' values), so
    that every event counts, equal ones too (a `FlatMap`'s of one record share its
    offset and time)."""

    def __init__(self, aggregate: Aggregate, row: Callable[[Sequence[Any]], tuple]) -> None:
        self.measures = list(aggregate.measures.values())
        self.group_of = key_getter(aggregate.by)
        self.getters = [value_getter(measure.field) for measure in self.measures]
        self.table, self.row = aggregate.table.name, row

    def items(
        self, events: list[Any], times_ms: list[int], offsets: list[int]
    ) -> list[tuple[str, Any]]:
        getters, keyed = self.getters, []
        place, previous = 0, None
        for event, time_ms, offset in zip(events, times_ms, offsets, strict=True):
            place = place + 1 if offset == previous else 0
            previous = offset
            item = (time_ms, offset, place, *(get(event) for get in getters))
            keyed.append((state_key(self.group_of(event)), item))
        return keyed

    def start(self, item: Any) -> Any:
        return self.extend([item[0], item[0], *([None] * len(self.measures))], [item])

    def extend(self, acc: Any, items: list[Any]) -> Any:
        acc[1] = items[-1][0]
        for at, measure in enumerate(self.measures):
            acc[2 + at] = measure.add(acc[2 + at], [item[3 + at] for item in items])
        return acc

    def copy(self, acc: Any) -> Any:
        return copy.deepcopy(acc)

    def closed(self, key: str, acc: Any, rows: Rows) -> None:
        results = [m.result(value) for m, value in zip(self.measures, acc[2:], strict=True)]
        row = self.row([*group_of_key(key), acc[0], acc[1], *results])
        rows.setdefault(self.table, []).append(row)

    def view(self, key: str, accs: list[Any], rows: Rows) -> None:
        """Sessions emit final rows only."""
