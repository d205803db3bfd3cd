"""Query-string parameters: the types a query's parameters convert to (by msgspec's
rules for strings, so that the OpenAPI document states exactly what is accepted), the
conversion the query service applies to each parameter a query declares, and offset
ranges."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from kappaflow.errors import InvalidQuery
from kappaflow.events import MAX_EVENT_MS

if TYPE_CHECKING:
    from kappaflow.app import Param

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
"""Refused in every parameter: no identifier holds one, and PostgreSQL refuses NUL in
text."""
TEXT = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str, Meta(pattern=TEXT)]
"""Any text without control characters (empty included)."""
Segment = Annotated[str, Meta(pattern=r"^[^\x00-\x1f\x7f/]+$")]
"""A path parameter: a segment of the path, not empty."""
UnixTime = Annotated[
    Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
    | Annotated[datetime, Meta(tz=True)],
    Meta(description="unix seconds or an RFC 3339 time with a zone"),
]
"""A time; its bounds, those of a float, refuse NaN and infinities."""
ValidFrom = Annotated[
    Annotated[float, Meta(ge=0, le=MAX_EVENT_MS // 1000)] | Annotated[datetime, Meta(tz=True)],
    Meta(description="the time uploaded rows are valid from (for a table with history): "
                     "unix seconds or an RFC 3339 time with a zone; default now"),
]  # fmt: skip
"""When an upload's rows are valid from: unix seconds up to the year 9999, or any RFC
3339 time with a zone (one before 1970 is before every event)."""
VALID_FROM_PARAM = "valid_from"
Ranges = Annotated[
    str,
    Meta(pattern=r"^[0-9]{1,18}(-[0-9]{1,18})?(,[0-9]{1,18}(-[0-9]{1,18})?)*$",
         description="numbers and ranges like 0,2,5-7 (each low-high)"),
]  # fmt: skip
"""Offsets (at most 18 digits: below any log's, and a 64-bit integer) and inclusive
ranges of them, as `parse_ranges` reads them."""


def read_params(declared: Mapping[str, Param], values: Mapping[str, str]) -> dict[str, Any]:
    """``values`` with each parameter ``declared`` converted to its type; raises
    `InvalidQuery` naming a required one missing, or one that does not convert."""
    converted: dict[str, Any] = dict(values)
    for name, param in declared.items():
        value = values.get(name)
        if value is None:
            if param.required:
                raise InvalidQuery(f"{name} is required: {describe(param.type)}")
            continue
        try:
            converted[name] = msgspec.convert(value, param.type, strict=False)
        except msgspec.ValidationError:
            raise InvalidQuery(f"{name} must be {describe(param.type)}, got {value!r}") from None
    return converted


def describe(kind: Any) -> str:
    """What a value of type ``kind`` (a parameter's) must be, in words."""
    return _describe(mi.type_info(kind))


def _describe(info: mi.Type) -> str:
    if isinstance(info, mi.Metadata):
        description = (info.extra_json_schema or {}).get("description")
        return description or _describe(info.type)
    if isinstance(info, mi.UnionType):
        return " or ".join(map(_describe, info.types))
    if isinstance(info, mi.LiteralType):
        return f"one of {', '.join(map(str, info.values))}"
    if isinstance(info, (mi.IntType, mi.FloatType)):
        kind = "an integer" if isinstance(info, mi.IntType) else "a number"
        if None not in (info.ge, info.le):
            return f"{kind} from {info.ge} to {info.le}"
        bounds = [(">=", info.ge), ("<=", info.le)]
        return " ".join([kind, *(f"{op} {bound}" for op, bound in bounds if bound is not None)])
    if isinstance(info, mi.DateType):
        return "a day like 2026-01-31"
    if isinstance(info, mi.DateTimeType):
        return "an RFC 3339 time with a zone"
    if isinstance(info, mi.StrType) and info.pattern == TEXT:
        return "text without control characters (U+0000 to U+001F, U+007F)"
    if isinstance(info, mi.StrType):
        return f"text matching {info.pattern}" if info.pattern else "text"
    return f"a {type(info).__name__.removesuffix('Type').lower()}"


def valid_from_ms(text: str, name: str = VALID_FROM_PARAM) -> int:
    """The epoch milliseconds of a `ValidFrom` written as ``text`` (before 1970: before
    every event); raises `InvalidQuery` naming the parameter (``name``)."""
    try:
        moment = msgspec.convert(text, ValidFrom, strict=False)
    except msgspec.ValidationError:
        raise InvalidQuery(
            f"{name} must be unix seconds (0 to {MAX_EVENT_MS // 1000}) or an RFC "
            f"3339 time with a zone, got {text!r}"
        ) from None
    return round(seconds(moment) * 1000)


def seconds(moment: float | datetime) -> float:
    """A `UnixTime` in unix seconds."""
    return moment.timestamp() if isinstance(moment, datetime) else moment


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """``0,2,5-7`` -> [(0, 0), (2, 2), (5, 7)]: numbers and inclusive ranges of them;
    raises ValueError for anything else."""
    ranges = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        low, high = int(first), int(last) if dash else int(first)
        if not 0 <= low <= high:
            raise ValueError(f"{part!r} is not a number >= 0 or a range low-high")
        ranges.append((low, high))
    return ranges
