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

import bisect
import copy
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from kappaflow.app import Batch, Output, Rows, Stateless
from kappaflow.errors import AppError, StateFormatError
from kappaflow.ops.measures import Measure, counted, same
from kappaflow.ops.shape import check_fields, key_getter, names, row_maker, value_getter
from kappaflow.ops.windows import Hopping, Session, Sliding, Tumbling, Window
from kappaflow.store.tables import Table
from kappaflow.stream.due import DueKeys
from kappaflow.stream.sessions import SessionWindows
from kappaflow.stream.state import State

if TYPE_CHECKING:
    from kappaflow.app import Stream

Emit = Literal["final", "update"]
Group = tuple[Any, ...]
_json_key = msgspec.json.Encoder().encode
_json_values = msgspec.json.Decoder(list[Any]).decode


def state_key(group: Group) -> str:
    """The keyed state's key of a group: its values as JSON."""
    return _json_key(group).decode()


class Aggregate:
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
        self._engine = _engine(self, row_maker(fields, sources))
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

    def initial_state(self) -> Any:
        return self._engine.initial_state()

    def process(self, state: Any, batch: Batch) -> Output[Any]:
        return self._engine.process(state, batch)

    def encode(self, state: Any) -> bytes:
        return self._engine.encode(state)

    def changed_keys(self, state: Any) -> dict[str, bytes | None]:
        return self._engine.changed_keys(state)

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> Any:
        return self._engine.decode(data, keys)

    def key_count(self, state: Any) -> int:
        return self._engine.key_count(state)


def _engine(aggregate: Aggregate, row: Callable[[Sequence[Any]], tuple]) -> Any:
    window = aggregate.window
    if isinstance(window, Session):
        fold = _SessionFold(aggregate, row)
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


RowsOf = Callable[[Group, int, int, list[Any]], list[tuple]]
"""A closed or updated window's rows: (group, start, end, accumulators) -> rows."""


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


def window_keys(
    batch: Batch, by: tuple[str, ...], window: Tumbling | Hopping
) -> tuple[list[tuple[Any, int]], list[int] | None]:
    """Each event's group and window start, in order: a group is the value of the one
    field of ``by``, or a tuple of their values (see `parts`). An event in several
    windows has a key for each, and then the event of each key is given (else None).
    Column by column: a loop in Python per event is what costs the most."""
    events, times = batch.events, batch.times_ms
    groups: list[Any] = list(map(attrgetter(*by), events)) if by else [()] * len(events)
    if isinstance(window, Tumbling):
        size = window.size_ms
        return list(zip(groups, [time_ms - time_ms % size for time_ms in times], strict=True)), None
    at = [i for i, time_ms in enumerate(times) for _ in window.starts(time_ms)]
    starts = [start for time_ms in times for start in window.starts(time_ms)]
    return list(zip([groups[i] for i in at], starts, strict=True)), at


def grouped(
    batch: Batch, by: tuple[str, ...], window: Tumbling | Hopping, measures: list[Measure]
) -> dict[tuple[Any, int], list[Sequence[Any]]]:
    """Each group and window start of the batch (`window_keys`), with each measure's
    run of values (of how many events, for a measure that `reads` nothing)."""
    keys, at = window_keys(batch, by, window)
    events = batch.events if at is None else [batch.events[i] for i in at]
    columns = [list(map(value_getter(m.field), events)) if m.reads else None for m in measures]
    if all(column is None for column in columns):
        return {key: [range(n)] * len(columns) for key, n in Counter(keys).items()}
    index: defaultdict[tuple[Any, int], list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        index[key].append(i)
    return {
        key: [range(len(found)) if column is None else [column[i] for i in found]
              for column in columns]
        for key, found in index.items()
    }  # fmt: skip


def parts(by: tuple[str, ...]) -> Callable[[Any], Group]:
    """What turns a group as `grouped` gives it into the tuple of its values."""
    return (lambda group: (group,)) if len(by) == 1 else (lambda group: group)


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


class WindowState:
    """A partition's keyed state of open windows, and the groups by when their next
    window closes (scheduled again from the state after a restore)."""

    def __init__(self, state: State[Any]) -> None:
        self.state = state
        self.due = DueKeys()
        self.restored = len(state) > 0


class _Keyed:
    """An operator keeping each group's windows in keyed state: one key per group."""

    emit: Emit
    table: str

    def initial_state(self) -> WindowState:
        return WindowState(State(Any))

    def encode(self, state: WindowState) -> bytes:
        return b""

    def changed_keys(self, state: WindowState) -> dict[str, bytes | None]:
        return state.state.changes()

    def key_count(self, state: WindowState) -> int:
        return len(state.state)

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> WindowState:
        if data:
            raise StateFormatError(f"{type(self).__name__} keep no state of a whole "
                                   "partition, but the store holds some")  # fmt: skip
        return WindowState(State(Any, stored=keys))

    def process(self, state: WindowState, batch: Batch) -> Output[WindowState]:
        if state.restored:
            for key, value in state.state.items():
                state.due.schedule(key, self.due(value))
            state.restored = False
        rows: list[tuple] = []
        self.add(state, batch, rows)
        for key in state.due.pop(batch.watermark_ms):
            value = state.state.get(key)
            if self.close(value, batch.watermark_ms, rows):
                state.state.set(key, value)
                state.due.schedule(key, self.due(value))
            else:
                state.state.delete(key)
        state.state.flush()
        return Output(state, {self.table: rows} if rows else {})

    def add(self, state: WindowState, batch: Batch, rows: list[tuple]) -> None: ...

    def due(self, value: Any) -> int:
        """When the group's state next changes by event time alone."""
        ...

    def close(self, value: Any, watermark_ms: int, rows: list[tuple]) -> bool:
        """Close what the watermark has passed; whether the group keeps any state."""
        ...


class KeyedWindows(_Keyed):
    """Tumbling or hopping windows of groups each in one partition: a group's state is
    [group, {window start: accumulators}]."""

    def __init__(
        self, window: Tumbling | Hopping, by: tuple[str, ...], measures: list[Measure],
        table: str, rows_of: RowsOf, emit: Emit,
    ) -> None:  # fmt: skip
        self.window, self.measures, self.table, self.rows_of = window, measures, table, rows_of
        self.emit, self.by, self.parts = emit, by, parts(by)

    def add(self, state: WindowState, batch: Batch, rows: list[tuple]) -> None:
        size, adds, keyed = self.window.size_ms, [m.add for m in self.measures], state.state
        by_group: dict[Group, list[tuple[int, list[Sequence[Any]]]]] = {}
        for (group, start), runs in grouped(batch, self.by, self.window, self.measures).items():
            by_group.setdefault(self.parts(group), []).append((start, runs))
        for group, windows in by_group.items():
            key = state_key(group)
            value = keyed.get(key) or [list(group), {}]
            opened = value[1]
            for start, runs in windows:
                accs = opened.get(start) or [None] * len(adds)
                accs = [add(acc, run) for add, acc, run in zip(adds, accs, runs, strict=True)]
                opened[start] = accs
                if self.emit == "update":
                    rows += self.rows_of(group, start, start + size, accs)
            keyed.set(key, value)
            state.due.schedule(key, self.due(value))

    def due(self, value: Any) -> int:
        return min(value[1]) + self.window.size_ms

    def close(self, value: Any, watermark_ms: int, rows: list[tuple]) -> bool:
        size, opened = self.window.size_ms, value[1]
        group = tuple(value[0])
        for start in sorted(opened):
            if start + size > watermark_ms:
                break
            accs = opened.pop(start)
            if self.emit == "final":
                rows += self.rows_of(group, start, start + size, accs)
        return bool(opened)


class SlidingWindows(_Keyed):
    """Sliding windows, one ending at each event time of a group: a group's state is
    [group, the latest window end written (final), its items], each item [time, the
    measures' values], sorted by time. Items stay while a window to be written may
    hold them."""

    def __init__(
        self, window: Sliding, by: tuple[str, ...], measures: list[Measure], table: str,
        row: Callable[[Sequence[Any]], tuple], emit: Emit,
    ) -> None:  # fmt: skip
        self.size, self.measures, self.table, self.row, self.emit = (
            window.size_ms, measures, table, row, emit)  # fmt: skip
        self.group_of = key_getter(by)
        self.getters = [value_getter(measure.field) for measure in measures]

    def add(self, state: WindowState, batch: Batch, rows: list[tuple]) -> None:
        keyed, getters = state.state, self.getters
        new: dict[Group, list[list[Any]]] = {}
        for event, time_ms in zip(batch.events, batch.times_ms, strict=True):
            new.setdefault(self.group_of(event), []).append([time_ms, *(g(event) for g in getters)])
        for group, items in new.items():
            key = state_key(group)
            value = keyed.get(key) or [list(group), None, []]
            held = value[2]
            for item in items:
                bisect.insort(held, item, key=_time)
            if self.emit == "update":
                first = min(item[0] for item in items)
                for end in sorted({item[0] for item in held if item[0] >= first}):
                    rows.append(self._row(group, held, end))
            keyed.set(key, value)
            state.due.schedule(key, self.due(value))

    def _row(self, group: Group, held: list[list[Any]], end: int) -> tuple:
        low = bisect.bisect_right(held, end - self.size, key=_time)
        high = bisect.bisect_right(held, end, key=_time)
        window = held[low:high]
        results = [m.of([item[at] for item in window]) for at, m in enumerate(self.measures, 1)]
        return self.row([*group, end - self.size, end, *results])

    def _unwritten(self, value: Any) -> int | None:
        """The first window end not yet written (final); None if none is left."""
        if self.emit == "update":
            return None
        done, held = value[1], value[2]
        at = 0 if done is None else bisect.bisect_right(held, done, key=_time)
        return held[at][0] if at < len(held) else None

    def due(self, value: Any) -> int:
        first = self._unwritten(value)
        return value[2][0][0] + self.size if first is None else first + 1

    def close(self, value: Any, watermark_ms: int, rows: list[tuple]) -> bool:
        group, held = tuple(value[0]), value[2]
        if self.emit == "final":
            ends = sorted({item[0] for item in held if item[0] < watermark_ms
                           and (value[1] is None or item[0] > value[1])})  # fmt: skip
            for end in ends:
                rows.append(self._row(group, held, end))
            if ends:
                value[1] = ends[-1]
        first = self._unwritten(value)
        bound = min(watermark_ms, first if first is not None else watermark_ms) - self.size
        del held[: bisect.bisect_right(held, bound, key=_time)]
        return bool(held)


def _time(item: list[Any]) -> int:
    return item[0]


class _SessionFold:
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
        row = self.row([*_json_values(key), acc[0], acc[1], *results])
        rows.setdefault(self.table, []).append(row)

    def view(self, key: str, accs: list[Any], rows: Rows) -> None:
        """Sessions emit final rows only."""
