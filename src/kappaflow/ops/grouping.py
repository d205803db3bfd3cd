"""A batch's events by group and window: the keys the windowed operators fold, column
by column where they can (a loop in Python per event is what costs the most), and a
group's key in keyed state."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import msgspec

from kappaflow.app import Batch
from kappaflow.ops.measures import Measure
from kappaflow.ops.shape import value_getter
from kappaflow.ops.windows import Hopping, Tumbling

Group = tuple[Any, ...]
RowsOf = Callable[[Group, int, int, list[Any]], list[tuple]]
"""A closed or updated window's rows: (group, start, end, accumulators) -> rows."""
_json_key = msgspec.json.Encoder().encode
group_of_key = msgspec.json.Decoder(list[Any]).decode
"""A group's values from its `state_key`."""


def state_key(group: Group) -> str:
    """The keyed state's key of a group: its values as JSON."""
    return _json_key(group).decode()


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
