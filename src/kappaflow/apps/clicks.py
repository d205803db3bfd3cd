"""Click analytics on 1.usa.gov short-link records (bit.ly's JSON feed): per minute
and per hour, clicks by country, time zone, browser, operating system, referrer
domain, target domain and target URL; top-K target URLs per window.

Records come as the feed wrote them: most fields may be missing, and keep-alive lines
``{"_heartbeat_": <unix time>}`` are not clicks: they are counted under the dimension
``keepalive`` and nothing else. Event time is ``t`` (unix seconds). Browser and OS
families come from uap's user-agent patterns (ua-parser)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import urlsplit

import msgspec
import ua_parser

from kappaflow.app import App, Param, Query, Stream
from kappaflow.errors import InvalidQuery
from kappaflow.events import MAX_EVENT_MS, EventId, EventSeconds
from kappaflow.query.params import int_param, time_param
from kappaflow.settings import Settings
from kappaflow.store.base import Store
from kappaflow.stream.windows import WINDOW_SIZES_MS, TumblingCounts, counts_table

UNKNOWN = "unknown"
DIMENSIONS = ("country", "tz", "browser", "os", "referrer", "domain", "url", "keepalive")
COUNTS = counts_table("click_counts")


class Click(msgspec.Struct, omit_defaults=True):
    """A bit.ly click record (or a keep-alive); only ``t`` (or ``_heartbeat_``) is needed.
    ``event_id``, a client's retry id, is de-duplicated with the link's hash ``g``."""

    t: EventSeconds | None = None
    a: str | None = None
    c: str | None = None
    tz: str | None = None
    r: str | None = None
    u: str | None = None
    g: str = ""
    h: str | None = None
    nk: int | None = None
    al: str | None = None
    hh: str | None = None
    l: str | None = None  # noqa: E741 - the feed's field name
    cy: str | None = None
    gr: str | None = None
    hc: int | None = None
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


def dimensions(click: Click) -> Iterator[tuple[str, str]]:
    if click.heartbeat is not None:
        yield "keepalive", "keepalive"
        return
    browser, system = agent_families(click.a) if click.a else (UNKNOWN, UNKNOWN)
    yield "country", click.c or UNKNOWN
    yield "tz", click.tz or UNKNOWN
    yield "browser", browser
    yield "os", system
    yield "referrer", "direct" if click.r in (None, "", "direct") else domain_of(click.r) or UNKNOWN
    yield "domain", domain_of(click.u) or UNKNOWN
    yield "url", click.u or UNKNOWN


class Count(msgspec.Struct):
    window: str
    start: str
    value: str
    clicks: int


def _window(params: Mapping[str, str]) -> str:
    window = params.get("window", "1h")
    if window not in WINDOW_SIZES_MS:
        raise InvalidQuery(f"window must be one of {', '.join(WINDOW_SIZES_MS)}, got {window!r}")
    return window


WINDOW = Param(f"one of {', '.join(WINDOW_SIZES_MS)} (default 1h)")
TIME_RANGE = {
    name: Param(f"{name} this time (unix seconds or RFC 3339 with a zone; default: {edge})")
    for name, edge in (("from", "the first"), ("to", "the last"))
}


def _range_ms(params: Mapping[str, str]) -> tuple[int, int]:
    """``from``/``to`` as unix seconds or RFC 3339 times with a zone; default: all.
    Times outside what events may carry (1970 to 9999) are taken as those limits."""
    bounds = []
    for name, default in (("from", 0), ("to", MAX_EVENT_MS)):
        seconds = time_param(params, name)
        bounds.append(
            default if seconds is None else min(max(round(seconds * 1000), 0), MAX_EVENT_MS)
        )
    if bounds[0] > bounds[1]:
        raise InvalidQuery(f"from ({params.get('from')}) is after to ({params.get('to')})")
    return bounds[0], bounds[1]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def counts_query(store: Store, params: Mapping[str, str]) -> list[Count]:
    dimension = params.get("dimension", "")
    if dimension not in DIMENSIONS:
        raise InvalidQuery(f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    window = _window(params)
    first, last = _range_ms(params)
    rows = store.query(
        "SELECT start_ms, value, events FROM click_counts WHERE span = ? AND dimension = ? "
        "AND start_ms >= ? AND start_ms <= ? ORDER BY start_ms, events DESC, value",
        (window, dimension, first, last),
    )
    return [Count(window, _iso(start), value, n) for start, value, n in rows]


def top_query(store: Store, params: Mapping[str, str]) -> list[Count]:
    window = _window(params)
    first, last = _range_ms(params)
    k = int_param(params, "k", 10, 1, 1000)
    rows = store.query(
        "SELECT start_ms, value, events FROM (SELECT start_ms, value, events, row_number() "
        "OVER (PARTITION BY start_ms ORDER BY events DESC, value) AS rank FROM click_counts "
        "WHERE span = ? AND dimension = 'url' AND start_ms >= ? AND start_ms <= ?) "
        "WHERE rank <= ? ORDER BY start_ms, events DESC, value",
        (window, first, last, k),
    )
    return [Count(window, _iso(start), value, n) for start, value, n in rows]


def create_app(settings: Settings) -> App:
    clicks = Stream("clicks", Click, key="g", time="t", time_unit="s", dedup_by="event_id")
    return App(
        "clicks",
        streams=[clicks],
        tables=[COUNTS],
        processors={clicks.name: TumblingCounts(COUNTS, dimensions)},
        queries=[
            Query("/v1/clicks/counts", counts_query,
                  "Clicks per window by a dimension (dimension, window=1m|1h, from, to: unix "
                  "seconds or RFC 3339). JSON, or CSV with Accept: text/csv or format=csv.",
                  list[Count], {"dimension": Param(f"one of {', '.join(DIMENSIONS)}", True),
                                "window": WINDOW, **TIME_RANGE}),
            Query("/v1/clicks/top", top_query,
                  "The k most clicked target URLs of each window (window, k, from, to).",
                  list[Count], {"window": WINDOW, "k": Param("1 to 1000 (default 10)"),
                                **TIME_RANGE}),
        ],
    )  # fmt: skip
