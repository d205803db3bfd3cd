"""How an operator's results become rows of the table it writes: the row struct's
fields are checked against what the operator fills in, and rows are made as tuples in
the table's column order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any

import msgspec

from kappaflow.errors import AppError


def fields_of(into: type[msgspec.Struct]) -> tuple[str, ...]:
    if not (isinstance(into, type) and issubclass(into, msgspec.Struct)):
        raise AppError(f"into= takes a msgspec.Struct class (the rows' type), got {into!r}")
    return into.__struct_fields__


def check_fields(
    operator: str, into: type[msgspec.Struct], required: Iterable[str], optional: Iterable[str] = ()
) -> tuple[str, ...]:
    """The fields of ``into``, which must be ``required`` and some of ``optional``;
    `AppError` naming the difference otherwise."""
    fields = fields_of(into)
    required = tuple(required)
    missing = [name for name in required if name not in fields]
    extra = [name for name in fields if name not in required and name not in optional]
    if missing or extra:
        wanted = ", ".join([*required, *(f"[{name}]" for name in optional)])
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"not filled in: {', '.join(extra)}"] if extra else []
        raise AppError(
            f"{operator}: the fields of {into.__name__} are its rows' columns: {wanted} "
            f"(those in brackets optional); {'; '.join(problems)}"
        )
    return fields


def names(by: str | Sequence[str]) -> tuple[str, ...]:
    return (by,) if isinstance(by, str) else tuple(by)


def key_getter(fields: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """What reads the values of ``fields`` of an event, as a tuple."""
    if not fields:
        return lambda event: ()
    get = attrgetter(*fields)
    if len(fields) == 1:
        return lambda event: (get(event),)
    return get


def value_getter(field: str | None) -> Callable[[Any], Any]:
    """What reads ``field`` of an event (None: the event itself)."""
    return (lambda event: event) if field is None else attrgetter(field)


def row_maker(
    fields: Sequence[str], sources: Mapping[str, int]
) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """What turns the values an operator fills in (a sequence, each field at the index
    ``sources`` gives) into a row: a tuple in the order of ``fields``."""
    order = [sources[name] for name in fields]
    return lambda values: tuple([values[at] for at in order])
