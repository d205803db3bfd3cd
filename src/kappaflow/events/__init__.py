"""Field types shared by event schemas, and event-time conversion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta

EventTime = Annotated[int, Meta(ge=0)] | Annotated[datetime, Meta(tz=True)]
"""Event time: epoch milliseconds, or an RFC 3339 string with a time zone."""

Identifier = Annotated[str, Meta(min_length=1, max_length=256)]


def event_time_ms(value: int | datetime) -> int:
    """Epoch milliseconds of an event-time value."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return value
