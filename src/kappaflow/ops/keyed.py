"""Windows of groups each in one partition, kept in the partition's keyed `State`, one
key per group: tumbling and hopping windows (`KeyedWindows`) and sliding windows
(`SlidingWindows`)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kappaflow.app import Batch, Output
from kappaflow.errors import StateFormatError
from kappaflow.ops.grouping import Group, RowsOf, grouped, parts, state_key
from kappaflow.ops.measures import Measure
from kappaflow.ops.shape import key_getter, value_getter
from kappaflow.ops.windows import Emit, Hopping, Sliding, Tumbling
from kappaflow.stream.due import DueKeys
from kappaflow.stream.state import State


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
