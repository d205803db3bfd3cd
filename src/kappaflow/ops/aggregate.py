"""Windowed aggregation: `Aggregate` groups a stream's events by fields (``by``) and
windows of event time, computes `Measure`s over each group's window, and writes a row
per group and window to a table of its own, when the window closes (``emit='final'``)
or with every batch that changes it (``emit='update'``).

Where the rows come from depends on where a group's events are. A group spread over
partitions (``by`` not naming the stream's key) is aggregated where it is written:
each batch writes its partial measures, which the store merges into the row (`Table`
``mode='add'``), so only measures that merge so (`count`, `total`, `smallest`,
`largest`), tumbling or hopping windows and ``emit='update'`` fit it; the operator keeps
no state. Every other aggregate keeps each group's open windows in the partition's
keyed `State`, which needs each group's events in one partition: ``by`` names the
stream's key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from kappaflow.app import Delegating
from kappaflow.errors import AppError
from kappaflow.ops.grouping import Group, RowsOf
from kappaflow.ops.keyed import KeyedWindows, SlidingWindows
from kappaflow.ops.measure_fold import MeasureFold
from kappaflow.ops.measures import Measure, same
from kappaflow.ops.merged import MergedWindows
from kappaflow.ops.shape import check_fields, names, row_maker
from kappaflow.ops.windows import Emit, Hopping, Session, Sliding, Tumbling, Window
from kappaflow.store.tables import Table
from kappaflow.stream.sessions import SessionWindows

if TYPE_CHECKING:
    from kappaflow.app import Stream


class Aggregate(Delegating):
    """A `Processor`: per group of ``by`` (event fields) and window of ``window``, the
    ``measures`` (column name -> `Measure`), written to ``table`` (default: the
    struct's name in snake case) as rows of ``into``, a `msgspec.Struct` whose fields
    are ``by``'s, ``start_ms`` (``end_ms`` for `Sliding` windows, whose rows are keyed
    by it), optionally the other of the two, and the measures'. The table is
    ``self.table``; the app need not list it.

    ``emit='final'``: a window's row is written once, when the partition's watermark
    passes its end (its events are all in: a later one is late); session windows emit
    only so. ``emit='update'``: the rows of the windows a batch changes are written
    with it; a window's state goes when the watermark passes its end."""

    def __init__(
        self,
        window: Window,
        into: type[msgspec.Struct],
        *,
        by: str | Sequence[str],
        table: str | None = None,
        emit: Emit = "update",
        **measures: Measure,
    ) -> None:
        if emit not in ("final", "update"):
            raise AppError(f"Aggregate: emit is 'final' or 'update', got {emit!r}")
        if not measures:
            raise AppError("Aggregate: name at least one measure, such as views=count()")
        if isinstance(window, Session) and emit == "update":
            raise AppError("Aggregate: session windows emit='final' only: a session's "
                           "start and end move while it is open")  # fmt: skip
        self.window, self.by, self.emit = window, names(by), emit
        self.measures = measures
        anchor, other = "start_ms", "end_ms"
        if isinstance(window, Sliding):
            anchor, other = other, anchor
        fields = check_fields("Aggregate", into, [*self.by, anchor, *measures], [other])
        self.merged = (emit == "update" and isinstance(window, Tumbling | Hopping)
                       and all(measure.merge for measure in measures.values()))  # fmt: skip
        merge: dict[str, Any] = {name: m.merge for name, m in measures.items() if m.merge != "add"}
        if other in fields:
            merge[other] = "replace"
        self.table: Table[Any] = Table.of(
            into, key=(*self.by, anchor), name=table, **(
                {"mode": "add", "merge": merge} if self.merged else {}))  # fmt: skip
        self.tables = (self.table,)
        n = len(self.by)
        sources = {name: at for at, name in enumerate(self.by)}
        sources |= {"start_ms": n, "end_ms": n + 1}
        sources |= {name: n + 2 + at for at, name in enumerate(measures)}
        self.fields = fields
        self.inner = _engine(self, row_maker(fields, sources))
        self.judges_lateness = isinstance(window, Session)

    def bind(self, stream: Stream) -> None:
        """Check that the operator can run on ``stream``: `AppError` if its groups span
        partitions but its measures, windows or emission need a group's events in one."""
        if self.merged or stream.key in self.by:
            return
        why = [f"{name}={m.name}()" for name, m in self.measures.items() if m.merge is None]
        if not isinstance(self.window, Tumbling | Hopping):
            why.append(f"{type(self.window).__name__} windows")
        if self.emit == "final":
            why.append("emit='final'")
        raise AppError(
            f"Aggregate into {self.table.name}: groups by {', '.join(self.by) or 'nothing'} "
            f"hold events of many keys of stream {stream.name!r} (keyed by {stream.key}), "
            f"in many partitions; {', '.join(why)} need(s) a group's events in one. Group by "
            f"{stream.key} as well, or use measures the store merges (count, total, smallest, "
            "largest) over tumbling or hopping windows with emit='update'"
        )


def _engine(aggregate: Aggregate, row: Callable[[Sequence[Any]], tuple]) -> Any:
    window = aggregate.window
    if isinstance(window, Session):
        fold = MeasureFold(aggregate, row)
        return SessionWindows(fold, window.gap_ms, window.lateness_ms, window.idle_ms)
    measures = list(aggregate.measures.values())
    if isinstance(window, Sliding):
        return SlidingWindows(window, aggregate.by, measures, aggregate.table.name, row,
                              aggregate.emit)  # fmt: skip
    rows_of = _one_row(aggregate, row)
    if aggregate.merged:
        return MergedWindows(window, aggregate.by, measures, aggregate.table.name, rows_of)
    return KeyedWindows(window, aggregate.by, measures, aggregate.table.name, rows_of,
                        aggregate.emit)  # fmt: skip


def _one_row(aggregate: Aggregate, row: Callable[[Sequence[Any]], tuple]) -> RowsOf:
    """A window's row; made at once when the fields are the group's, the window's and
    the measures', in that order, and each measure's result is its accumulator."""
    measures = list(aggregate.measures.values())
    results = [measure.result for measure in measures]
    plain = all(measure.result is same for measure in measures)
    by, named = aggregate.by, tuple(aggregate.measures)
    if plain and aggregate.fields == (*by, "start_ms", *named):
        return lambda group, start, end, accs: [(*group, start, *accs)]
    if plain and aggregate.fields == (*by, "start_ms", "end_ms", *named):
        return lambda group, start, end, accs: [(*group, start, end, *accs)]

    def rows_of(group: Group, start: int, end: int, accs: list[Any]) -> list[tuple]:
        return [row([*group, start, end, *map(_apply, results, accs)])]

    return rows_of


def _apply(function: Callable[[Any], Any], value: Any) -> Any:
    return function(value)
