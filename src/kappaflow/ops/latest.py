"""The latest event of each key by event time, kept in a table: whichever order the
events come in, and whichever partitions they come from, a key's row is that of its
latest event (`Table` ``mode='latest'``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from kappaflow.app import Batch, Output, Stateless
from kappaflow.ops.shape import fields_of, names
from kappaflow.store.tables import Row, Table


class Latest(Stateless):
    """A `Processor` writing, per value of ``by`` (fields of the table), a row of
    ``into`` (a `msgspec.Struct`) for the latest event: ``row(event, time_ms)`` makes it;
    by default each field is the event's field of the same name, and ``time`` (a field,
    default ``time_ms``) is the event time in ms. Of events at the same time, the first
    in the log stays (a retry rewrites nothing). It keeps no state: the store compares
    times, so it takes every event, however late (unless in a `Fanout` with processors
    that do not)."""

    tables: tuple[Table[Any], ...]
    judges_lateness = True  # no event is too late to be its key's latest
    closes_idle = False

    def __init__(
        self,
        into: type[msgspec.Struct],
        *,
        by: str | Sequence[str],
        time: str = "time_ms",
        table: str | None = None,
        row: Callable[[Any, int], Row] | None = None,
    ) -> None:
        fields = fields_of(into)
        self.table: Table[Any] = Table.of(into, key=names(by), name=table, mode="latest",
                                          time=time)  # fmt: skip
        self.tables = (self.table,)
        self.key_at = [fields.index(name) for name in self.table.key]
        self.row = row or _same_names(fields, time)

    def process(self, state: None, batch: Batch) -> Output[None]:
        latest: dict[tuple[Any, ...], tuple[int, Row]] = {}
        key_at, row_of = self.key_at, self.row
        for event, time_ms in zip(batch.events, batch.times_ms, strict=True):
            row = row_of(event, time_ms)
            values = tuple(row) if type(row) is tuple else msgspec.structs.astuple(row)
            key = tuple([values[at] for at in key_at])
            held = latest.get(key)
            if held is None or held[0] < time_ms:
                latest[key] = (time_ms, row)
        rows = [row for _, row in latest.values()]
        return Output(None, {self.table.name: rows} if rows else {})


def _same_names(fields: Sequence[str], time: str) -> Callable[[Any, int], tuple[Any, ...]]:
    def row(event: Any, time_ms: int) -> tuple[Any, ...]:
        return tuple([time_ms if name == time else getattr(event, name) for name in fields])

    return row
