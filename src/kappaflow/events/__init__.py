"""Field types shared by event schemas, and event-time conversion."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from msgspec import Meta

MAX_EVENT_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last instant an RFC 3339 time can name."""

Integer = int | Annotated[float, Meta(multiple_of=1)]
"""An integer, written ``1`` or ``1.0``: what JSON Schema (so the OpenAPI document)
calls an integer, which msgspec's ``int`` alone refuses in the second form."""

_NOT_AHEAD = "; ingest refuses times more than max_future_skew_s ahead of its clock"
EventSeconds = Annotated[
    Annotated[int, Meta(ge=0, le=MAX_EVENT_MS // 1000)]
    | Annotated[float, Meta(ge=0, le=MAX_EVENT_MS // 1000, multiple_of=1)],
    Meta(description="event time: an integer of epoch seconds" + _NOT_AHEAD),
]
"""Event time in epoch seconds, up to the year 9999: an `Integer`."""

EventTime = Annotated[
    Annotated[int, Meta(ge=0, le=MAX_EVENT_MS)]
    | Annotated[float, Meta(ge=0, le=MAX_EVENT_MS, multiple_of=1)]
    | Annotated[datetime, Meta(tz=True)],
    Meta(description="event time: an integer of epoch milliseconds, or an RFC 3339 time "
                     "with a zone from 1970 on" + _NOT_AHEAD),
]  # fmt: skip
"""Event time: epoch milliseconds up to the year 9999 (an `Integer`), or an RFC 3339
string with a time zone."""

NOT_IN_IDENTIFIERS = re.compile(r"[\x00-\x1f\x7f/]")
"""Control characters, which PostgreSQL (NUL) and terminals refuse, and ``/``, which
would end an identifier's segment of a query path."""

Identifier = Annotated[
    str,
    Meta(min_length=1, max_length=256, extra_json_schema={"pattern": r"^[^\x00-\x1f\x7f/]*$"}),
]
"""The name of a thing results are kept and queried by (a user, a video, a license
holder): 1 to 256 characters, none of them `NOT_IN_IDENTIFIERS`. msgspec checks the
length as it decodes; `kappaflow.events.validate.Identifiers` checks the characters
(a msgspec ``pattern`` would cost more than the rest of an event's decode), and the
JSON schema states them."""

EventId = Identifier
"""The id a client gives an event, the same in each of its retries (an idempotency key,
such as a UUID), for a stream that de-duplicates by it (`Stream.dedup_by`): an
`Identifier` (the store keeps the ids counted, and PostgreSQL refuses NUL), unique among
the events of its stream key."""


def event_time_ms(value: float | datetime) -> int:
    """Epoch milliseconds of an event-time value."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)
