"""Royalties and ad impressions of one closed viewing session, from its segments.

A segment is ``[start_s, end_s, start_ms, end_ms]``: the positions it covered and the
event times of its first and last heartbeat. Inside a segment, position maps to time
linearly, which places watched seconds and ad slots on UTC days.

- Royalties: the distinct seconds a session watched (seconds watched twice in one
  session count once; a new session counts them again), per UTC day on which they
  were played, times the title's rate per minute. Videos missing from the catalog
  count under the holder ``unknown`` at rate 0. The rate is the one the catalog had
  in force when the session started (`Lookup.at`): a rate change applies to sessions
  that start from its valid-from time on, live and in a replay alike. Per session and
  day, seconds are kept to the millisecond and amounts to a millionth of the currency,
  as integers, so totals do not depend on the order sessions close in.
- Impressions: an ad slot at position p counts once per session when a segment
  covers it (start_s <= p <= end_s), on the day p was played in the first such segment.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import msgspec
from prometheus_client import Counter

from kappaflow.app import Param, Query
from kappaflow.apps.video.catalog import UNKNOWN_HOLDER, Licence, Slots
from kappaflow.errors import InvalidQuery
from kappaflow.store.base import Store, Table

DAY_MS = 86_400_000
Segment = Sequence[float]


def day_of(ms: float) -> str:
    """The UTC date of epoch milliseconds ``ms``, as YYYY-MM-DD."""
    return _date(int(ms // DAY_MS))


@functools.lru_cache(maxsize=1024)
def _date(day: int) -> str:
    return datetime.fromtimestamp(day * (DAY_MS // 1000), UTC).strftime("%Y-%m-%d")


def _time_at(segment: Segment, position: float) -> float:
    start, end, start_ms, end_ms = segment
    if end == start:
        return start_ms
    return start_ms + (position - start) * (end_ms - start_ms) / (end - start)


def _uncovered(
    start: float, end: float, covered: list[list[float]]
) -> Iterator[tuple[float, float]]:
    """Parts of [start, end] outside the sorted, disjoint ``covered`` intervals."""
    for low, high in covered:
        if high <= start:
            continue
        if low >= end:
            break
        if low > start:
            yield start, low
        start = max(start, high)
    if start < end:
        yield start, end


def _cover(covered: list[list[float]], start: float, end: float) -> list[list[float]]:
    merged: list[list[float]] = []
    for low, high in sorted([*covered, [start, end]]):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return merged


def watched_by_day(segments: Sequence[Segment]) -> dict[str, float]:
    """Distinct seconds watched in a session, per UTC day they were played."""
    by_day: dict[str, float] = {}
    covered: list[list[float]] = []
    for segment in sorted(segments, key=lambda s: s[2]):
        start, end = segment[0], segment[1]
        for low, high in _uncovered(start, end, covered):
            _split(segment, low, high, by_day)
        covered = _cover(covered, start, end)
    return by_day


def _split(segment: Segment, low: float, high: float, by_day: dict[str, float]) -> None:
    """Add the seconds [low, high] of ``segment`` to the days they were played on."""
    t_low, t_high = _time_at(segment, low), _time_at(segment, high)
    if t_high <= t_low:
        day = day_of(t_low)
        by_day[day] = by_day.get(day, 0.0) + (high - low)
        return
    per_ms = (high - low) / (t_high - t_low)
    left, t = high - low, t_low
    while True:
        day_number = int(t // DAY_MS)
        next_midnight = (day_number + 1) * DAY_MS
        day = _date(day_number)
        if next_midnight >= t_high:  # the last day takes what is left, exactly
            by_day[day] = by_day.get(day, 0.0) + left
            return
        part = (next_midnight - t) * per_ms
        by_day[day] = by_day.get(day, 0.0) + part
        left -= part
        t = next_midnight


def royalties(
    segments: Sequence[Segment], licence: Licence | None
) -> list[tuple[str, str, int, int]]:
    """(day, license_holder, watched_ms, amount_micros) of one session. Integers, so
    that sums do not depend on the order sessions are added in."""
    holder, rate = licence or (UNKNOWN_HOLDER, 0.0)
    return [
        (day, holder, round(seconds * 1000), round(seconds / 60 * rate * 1_000_000))
        for day, seconds in watched_by_day(segments).items()
    ]


def impressions(
    segments: Sequence[Segment], slots: Sequence[tuple[float, str, str]]
) -> list[tuple[str, str, str]]:
    """(day, advertiser, campaign) of each slot one session's segments cover."""
    ordered = sorted(segments, key=lambda s: s[2])
    found = []
    for position, advertiser, campaign in slots:
        for segment in ordered:
            if segment[0] <= position <= segment[1]:
                found.append((day_of(_time_at(segment, position)), advertiser, campaign))
                break
    return found


ROYALTIES = Table(
    "video_royalties",
    columns=(("day", "TEXT"), ("license_holder", "TEXT"), ("watched_ms", "INTEGER"),
             ("amount_micros", "INTEGER")),
    key=("day", "license_holder"),
    mode="add",
)  # fmt: skip
IMPRESSIONS = Table(
    "ad_impressions",
    columns=(("day", "TEXT"), ("advertiser", "TEXT"), ("campaign", "TEXT"),
             ("impressions", "INTEGER"), ("viewers", "INTEGER")),
    key=("day", "advertiser", "campaign"),
    mode="add",
)  # fmt: skip
AD_VIEWERS = Table(
    "ad_viewers",
    columns=(("day", "TEXT"), ("advertiser", "TEXT"), ("campaign", "TEXT"), ("user_id", "TEXT")),
    key=("day", "advertiser", "campaign", "user_id"),
    mode="distinct",
    counts=(IMPRESSIONS.name, "viewers"),
)
REPORT_TABLES = (ROYALTIES, IMPRESSIONS, AD_VIEWERS)
UNKNOWN_VIDEOS = Counter(
    "kappaflow_video_unknown_catalog",
    "Closed viewing sessions of videos missing from the catalog (royalties go to 'unknown').",
)


def report_rows(
    user_id: str,
    video_id: str,
    segments: Sequence[Segment],
    videos: Mapping[str, Licence],
    slots: Mapping[str, Slots],
    rows: dict[str, list[tuple[Any, ...]]],
) -> None:
    """Add a closed session's royalty, impression and viewer rows to ``rows``."""
    licence = videos.get(video_id)
    if licence is None:
        UNKNOWN_VIDEOS.inc()
    rows.setdefault(ROYALTIES.name, []).extend(royalties(segments, licence))
    for day, advertiser, campaign in impressions(segments, slots.get(video_id, ())):
        rows.setdefault(IMPRESSIONS.name, []).append((day, advertiser, campaign, 1, 0))
        rows.setdefault(AD_VIEWERS.name, []).append((day, advertiser, campaign, user_id))


class RoyaltyRow(msgspec.Struct):
    day: str
    license_holder: str
    watched_s: float
    amount: float


class ImpressionRow(msgspec.Struct):
    day: str
    advertiser: str
    campaign: str
    impressions: int
    viewers: int


def _report(
    store: Store, table: Table, params: Mapping[str, Any], filter_column: str
) -> list[tuple[Any, ...]]:
    first, last = params["from"].isoformat(), params["to"].isoformat()
    if first > last:
        raise InvalidQuery(f"from ({first}) is after to ({last})")
    sql = f"SELECT {', '.join(table.column_names)} FROM {table.name} WHERE day BETWEEN ? AND ?"
    arguments: list[Any] = [first, last]
    if value := params.get(filter_column):
        sql += f" AND {filter_column} = ?"
        arguments.append(value)
    return store.query(sql + f" ORDER BY {', '.join(table.key)}", arguments)


def royalty_report(store: Store, params: Mapping[str, Any]) -> list[RoyaltyRow]:
    return [
        RoyaltyRow(day, holder, watched_ms / 1000, amount_micros / 1_000_000)
        for day, holder, watched_ms, amount_micros in _report(
            store, ROYALTIES, params, "license_holder"
        )
    ]


def impression_report(store: Store, params: Mapping[str, Any]) -> list[ImpressionRow]:
    return [ImpressionRow(*row) for row in _report(store, IMPRESSIONS, params, "advertiser")]


DAYS = {name: Param(f"{name} this UTC day, inclusive; from <= to", required=True, type=date)
        for name in ("from", "to")}  # fmt: skip
REPORT_QUERIES = (
    Query(
        "/v1/reports/royalties",
        royalty_report,
        "Distinct watched seconds and amounts per license holder and UTC day "
        "(from, to: days, inclusive; license_holder: optional). JSON, or CSV with "
        "Accept: text/csv or format=csv.",
        list[RoyaltyRow],
        {**DAYS, "license_holder": Param("only this license holder (empty: all)")},
    ),
    Query(
        "/v1/reports/impressions",
        impression_report,
        "Ad impressions and unique viewers per advertiser, campaign and UTC day "
        "(from, to: days, inclusive; advertiser: optional). JSON or CSV.",
        list[ImpressionRow],
        {**DAYS, "advertiser": Param("only this advertiser (empty: all)")},
    ),
)
