"""What a window aggregates: each `Measure` folds a group's values of one field into an
accumulator, in runs (a batch's values of a group at once), and gives its result.
Accumulators are what msgspec encodes, since keyed state keeps them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Merge = Literal["add", "min", "max"]


def same(acc: Any) -> Any:
    """The result of a measure whose accumulator is its result."""
    return acc


@dataclass(frozen=True)
class Measure:
    """An aggregate of ``field`` (None: of the events themselves). ``add(acc, values)``
    folds a run of values into ``acc`` (None before the first); ``result(acc)`` is what
    a row holds. ``merge``: how the store combines two partial results (``add``,
    ``min`` or ``max``), so that the measure of a group spread over partitions is
    computed where it is written; None where partial results do not combine so.
    ``reads``: False for a measure of how many values a run has only, whose ``add``
    is then given a sequence of that length instead of the values."""

    field: str | None
    add: Callable[[Any, Sequence[Any]], Any]
    result: Callable[[Any], Any] = same
    merge: Merge | None = None
    name: str = "fold"
    reads: bool = True

    def of(self, values: Sequence[Any]) -> Any:
        """The result over ``values``."""
        return self.result(self.add(None, values))


def counted(acc: int | None, values: Sequence[Any]) -> int:
    """`count`'s fold."""
    return (acc or 0) + len(values)


def count() -> Measure:
    """How many events."""
    return Measure(None, counted, merge="add", name="count", reads=False)


def total(field: str) -> Measure:
    """The sum of ``field``."""
    return Measure(field, lambda acc, values: (acc or 0) + sum(values), merge="add", name="total")


def smallest(field: str) -> Measure:
    """The least value of ``field``."""
    return Measure(field, lambda acc, values: min(values) if acc is None else min(acc, *values),
                   merge="min", name="smallest")  # fmt: skip


def largest(field: str) -> Measure:
    """The greatest value of ``field``."""
    return Measure(field, lambda acc, values: max(values) if acc is None else max(acc, *values),
                   merge="max", name="largest")  # fmt: skip


def mean(field: str) -> Measure:
    """The arithmetic mean of ``field``."""

    def add(acc: list[float] | None, values: Sequence[float]) -> list[float]:
        return [(acc[0] if acc else 0) + sum(values), (acc[1] if acc else 0) + len(values)]

    return Measure(field, add, lambda acc: acc[0] / acc[1], name="mean")


def distinct(field: str) -> Measure:
    """How many different values ``field`` takes (the values are kept: mind how many)."""

    def add(acc: list[Any] | None, values: Sequence[Any]) -> list[Any]:
        return list(set(values).union(acc or ()))

    return Measure(field, add, len, name="distinct")


def fold(step: Callable[[Any, Any], Any], initial: Any, field: str | None = None) -> Measure:
    """A measure of your own: ``step(acc, value)`` returns the accumulator after each
    value of ``field`` (None: each event), from ``initial``; it must not change
    ``initial`` in place. The accumulator is kept in state: anything msgspec encodes."""

    def add(acc: Any, values: Sequence[Any]) -> Any:
        acc = initial if acc is None else acc
        for value in values:
            acc = step(acc, value)
        return acc

    return Measure(field, add, name=getattr(step, "__name__", "fold"))
