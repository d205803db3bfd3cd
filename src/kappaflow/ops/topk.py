"""Windowed top-K: per group and window, the ``k`` values of a field that the most
events had, ranked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from kappaflow.app import Delegating
from kappaflow.errors import AppError
from kappaflow.ops.grouping import Group
from kappaflow.ops.keyed import KeyedWindows
from kappaflow.ops.measures import Measure
from kappaflow.ops.shape import check_fields, names, row_maker
from kappaflow.ops.windows import Emit, Hopping, Tumbling
from kappaflow.store.tables import Table

if TYPE_CHECKING:
    from kappaflow.app import Stream


def _tally(acc: dict[Any, int] | None, values: Sequence[Any]) -> dict[Any, int]:
    counts = Counter(acc or {})
    counts.update(values)
    return dict(counts)


class TopK(Delegating):
    """A `Processor`: per group of ``by`` (fields naming the stream's key: a group's
    events are in one partition) and window (tumbling or hopping), the ``k`` values of
    ``item`` (a field) with the most events, written to ``table`` as rows of ``into``,
    whose fields are ``by``'s, ``start_ms``, ``rank`` (1 to k), ``item``, ``score``
    (the events) and optionally ``end_ms``. Ties rank by value, None last. Emission as for
    `Aggregate`; with ``emit='update'`` a window's ranks are written again as they
    change. Its state holds each open window's count per value."""

    def __init__(
        self,
        window: Tumbling | Hopping,
        into: type[msgspec.Struct],
        *,
        by: str | Sequence[str],
        item: str,
        k: int,
        score: str = "events",
        table: str | None = None,
        emit: Emit = "final",
    ) -> None:
        if not isinstance(window, Tumbling | Hopping):
            raise AppError("TopK: windows are Tumbling or Hopping")
        if not (isinstance(k, int) and k > 0):
            raise AppError(f"TopK: k must be a positive whole number, got {k!r}")
        self.by, self.k = names(by), k
        fields = check_fields("TopK", into, [*self.by, "start_ms", "rank", item, score], ["end_ms"])
        self.table: Table[Any] = Table.of(into, key=(*self.by, "start_ms", "rank"), name=table)
        self.tables = (self.table,)
        n = len(self.by)
        sources = {name: at for at, name in enumerate(self.by)}
        sources |= {"start_ms": n, "end_ms": n + 1, "rank": n + 2, item: n + 3, score: n + 4}
        row = row_maker(fields, sources)

        def rows_of(group: Group, start: int, end: int, accs: list[Any]) -> list[tuple]:
            # None (a missing value) ranks after the values of its score: it has no order
            ranked = sorted(accs[0].items(), key=lambda pair: (-pair[1], pair[0] is None,
                                                               pair[0]))[:k]  # fmt: skip
            return [row([*group, start, end, rank, value, events])
                    for rank, (value, events) in enumerate(ranked, 1)]  # fmt: skip

        self.inner = KeyedWindows(window, self.by, [Measure(item, _tally, name="top")],
                                  self.table.name, rows_of, emit)  # fmt: skip

    def bind(self, stream: Stream) -> None:
        if stream.key not in self.by:
            raise AppError(
                f"TopK into {self.table.name}: by= must name {stream.key}, the key of stream "
                f"{stream.name!r}, so that each group's events are in one partition. For a "
                "top-K over all keys, count with Aggregate (the store merges the counts of "
                "all partitions) and rank when reading"
            )
