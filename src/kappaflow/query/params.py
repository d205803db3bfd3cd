"""Query-string parameters the queries share: times, bounded integers and offset
ranges. Each reads one parameter of a query's ``params`` and raises `InvalidQuery`
naming it when its value is wrong."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from kappaflow.errors import InvalidQuery


def time_param(params: Mapping[str, str], name: str) -> float | None:
    """Parameter ``name`` in Unix seconds, given as such or as an RFC 3339 time with a
    zone; None when it is absent or empty."""
    value = params.get(name)
    if not value:
        return None
    try:
        seconds: float | None = float(value)
    except ValueError:
        seconds = _rfc3339_seconds(value)
    if seconds is None or not math.isfinite(seconds):
        raise InvalidQuery(f"{name} must be unix seconds or an RFC 3339 time, got {value!r}")
    return seconds


def _rfc3339_seconds(value: str) -> float | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """Parameter ``name``, an integer from ``low`` to ``high``; ``default`` when absent."""
    value = params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise InvalidQuery(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return number


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


def ranges_param(params: Mapping[str, str], name: str) -> list[tuple[int, int]]:
    """Parameter ``name`` as `parse_ranges` reads it; empty when absent or empty."""
    value = params.get(name)
    if not value:
        return []
    try:
        return parse_ranges(value)
    except ValueError:
        raise InvalidQuery(
            f"{name} must be numbers and ranges like 0,2,5-7, got {value!r}"
        ) from None
