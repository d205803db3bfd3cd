"""Click analytics on 1.usa.gov short-link records (bit.ly's JSON feed): per minute
and per hour, clicks by country, time zone, browser, operating system, referrer
domain, target domain and target URL; top-K target URLs per window.

Records come as the feed wrote them: most fields may be missing, and keep-alive lines
``{"_heartbeat_": <unix time>}`` are not clicks: they are counted under the dimension
``keepalive`` and nothing else. Event time is ``t`` (unix seconds). Browser and OS
families come from uap's user-agent patterns (ua-parser)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec
import ua_parser
from msgspec import Meta

from kappaflow.app import App, Param, Query, Stream
from kappaflow.errors import InvalidQuery
from kappaflow.events import MAX_EVENT_MS, EventId, EventSeconds, Integer
from kappaflow.ops import Aggregate, FlatMap, Pipeline, Tumbling, count
from kappaflow.query.params import UnixTime, seconds
from kappaflow.settings import Settings
from kappaflow.store.base import Store

UNKNOWN = "unknown"
DIMENSIONS = ("country", "tz", "browser", "os", "referrer", "domain", "url", "keepalive")
MAX_EVENT_S = MAX_EVENT_MS / 1000


class Click(msgspec.Struct, omit_defaults=True):
    """A bit.ly click record (or a keep-alive); only ``t`` (or ``_heartbeat_``) is needed.
    ``event_id``, a client's retry id, is de-duplicated with the link's hash ``g``."""

    extra_json_schema: ClassVar[dict[str, Any]] = {
        "anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                  for name in ("t", "_heartbeat_")]
    }  # fmt: skip
    """What `__post_init__` requires beyond the fields' types, for the OpenAPI document."""

    t: EventSeconds | None = None
    a: str | None = None
    c: str | None = None
    tz: str | None = None
    r: str | None = None
    u: str | None = None
    g: str = ""
    h: str | None = None
    nk: Integer | None = None
    al: str | None = None
    hh: str | None = None
    l: str | None = None  # noqa: E741 - the feed's field name
    cy: str | None = None
    gr: str | None = None
    hc: Integer | None = None
    ll: list[float] | None = None
    kw: str | None = None
    heartbeat: EventSeconds | None = msgspec.field(default=None, name="_heartbeat_")
    event_id: EventId | None = None
    """Not the feed's: a client's id for the click, the same in each of its retries."""

    def __post_init__(self) -> None:
        if self.t is None:
            if self.heartbeat is None:
                raise ValueError("a click needs its time `t` (a keep-alive: `_heartbeat_`)")
            self.t = self.heartbeat


@lru_cache(maxsize=1 << 14)
def agent_families(agent: str) -> tuple[str, str]:
    """(browser family, OS family) of a user agent; ``Other`` when unknown."""
    parsed = ua_parser.parse(agent)
    browser = parsed.user_agent.family if parsed.user_agent else "Other"
    system = parsed.os.family if parsed.os else "Other"
    return browser, system


def domain_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


class Dimension(msgspec.Struct):
    dimension: str
    value: str


def dimensions(click: Click) -> list[Dimension]:
    """What a click is counted under."""
    if click.heartbeat is not None:
        return [Dimension("keepalive", "keepalive")]
    browser, system = agent_families(click.a) if click.a else (UNKNOWN, UNKNOWN)
    referrer = "direct" if click.r in (None, "", "direct") else domain_of(click.r)
    values = (click.c, click.tz, browser, system, referrer, domain_of(click.u), click.u)
    pairs = zip(DIMENSIONS[:-1], values, strict=True)
    return [Dimension(name, value or UNKNOWN) for name, value in pairs]


class ClickCount(msgspec.Struct):
    dimension: str
    value: str
    start_ms: int
    events: int


WINDOWS_MS = {"1m": 60_000, "1h": 3_600_000}
COUNTS = {
    window: Aggregate(Tumbling(size_ms), ClickCount, by=("dimension", "value"),
                      table=f"click_counts_{window}", events=count())
    for window, size_ms in WINDOWS_MS.items()
}  # fmt: skip
"""Clicks per window size, dimension and value: the store adds up the partitions'."""


class Count(msgspec.Struct):
    window: str
    start: str
    value: str
    clicks: int


WINDOW = Param("the window (default 1h)", type=Literal[tuple(COUNTS)])
TIME_RANGE = {
    name: Param(f"{name} this time, inclusive (default: {edge}); from <= to", type=UnixTime)
    for name, edge in (("from", "the first"), ("to", "the last"))
}


def _range_ms(params: Mapping[str, Any]) -> tuple[int, int]:
    """``from``/``to`` in epoch milliseconds; default: all. Times outside what events may
    carry (1970 to 9999) are taken as those limits."""
    bounds = [
        default if moment is None else round(min(max(seconds(moment), 0), MAX_EVENT_S) * 1000)
        for moment, default in ((params.get("from"), 0), (params.get("to"), MAX_EVENT_MS))
    ]
    if bounds[0] > bounds[1]:
        raise InvalidQuery(f"from ({_iso(bounds[0])}) is after to ({_iso(bounds[1])})")
    return bounds[0], bounds[1]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def counts_query(store: Store, params: Mapping[str, Any]) -> list[Count]:
    window = params.get("window", "1h")
    first, last = _range_ms(params)
    where = "dimension = ? AND start_ms >= ? AND start_ms <= ?"
    rows = store.select(COUNTS[window].table, where, (params["dimension"], first, last),
                        "start_ms, events DESC, value")  # fmt: skip
    return [Count(window, _iso(row.start_ms), row.value, row.events) for row in rows]


def top_query(store: Store, params: Mapping[str, Any]) -> list[Count]:
    """The top of each window, ranked when read: a URL's clicks are in many partitions,
    and their counts add up in the store."""
    window = params.get("window", "1h")
    first, last = _range_ms(params)
    rows = store.query(
        "SELECT start_ms, value, events FROM (SELECT start_ms, value, events, row_number() "
        "OVER (PARTITION BY start_ms ORDER BY events DESC, value) AS rank FROM "
        f"{COUNTS[window].table.name} WHERE dimension = 'url' AND start_ms >= ? "
        "AND start_ms <= ?) WHERE rank <= ? ORDER BY start_ms, events DESC, value",
        (first, last, params.get("k", 10)),
    )
    return [Count(window, _iso(start), value, n) for start, value, n in rows]


def create_app(settings: Settings) -> App:
    clicks = Stream("clicks", Click, key="g", time="t", time_unit="s", dedup_by="event_id")
    return App(
        "clicks",
        streams=[clicks],
        tables=[],
        processors={clicks.name: Pipeline(FlatMap(dimensions)).to(*COUNTS.values())},
        queries=[
            Query("/v1/clicks/counts", counts_query,
                  "Clicks per window by a dimension (dimension, window=1m|1h, from, to: unix "
                  "seconds or RFC 3339). JSON, or CSV with Accept: text/csv or format=csv.",
                  list[Count], {"dimension": Param("what to count clicks by", True,
                                                   Literal[DIMENSIONS]),
                                "window": WINDOW, **TIME_RANGE}),
            Query("/v1/clicks/top", top_query,
                  "The k most clicked target URLs of each window (window, k, from, to).",
                  list[Count], {"window": WINDOW, **TIME_RANGE,
                                "k": Param("how many of each window (default 10)",
                                           type=Annotated[int, Meta(ge=1, le=1000)])}),
        ],
    )  # fmt: skip
