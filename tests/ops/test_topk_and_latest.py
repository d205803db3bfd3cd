"""`TopK` and `Latest` through the real log, worker and store, with and without
restarts, against the same results computed in plain Python."""

from __future__ import annotations

from collections import Counter
from contextlib import closing

import msgspec
import pytest
from reference import (
    CLICKS,
    READINGS,
    T0,
    Reading,
    arrivals,
    keyed,
    readings,
    real_clicks,
    stored,
    windowed,
)

from kappaflow.app import App, Stream
from kappaflow.errors import AppError
from kappaflow.ops import Hopping, Latest, TopK, Tumbling
from kappaflow.settings import Settings
from kappaflow.testing import run_events

CLICK_EVENTS = real_clicks()
RESTARTS = pytest.mark.parametrize("restarts", [0, 3])


class TopCountries(msgspec.Struct):
    g: str
    start_ms: int
    rank: int
    c: str
    events: int


@RESTARTS
@pytest.mark.parametrize("emit", ["final", "update"])
def test_top_k_ranks_the_most_frequent_values_ties_by_value(
    settings: Settings, emit: str, restarts: int
) -> None:
    window = Tumbling(300_000)
    top = TopK(window, TopCountries, by="g", item="c", k=3, emit=emit)  # type: ignore[arg-type]
    app = App("tops", [CLICKS], [], {CLICKS.name: top})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    windows = windowed(arrived.events, ["g"], window)
    if emit == "final":
        windows = {at: found for at, found in windows.items()
                   if at[1] + window.size_ms <= arrived.watermarks[found[0].partition]}  # fmt: skip
    expected, tallies = [], []
    for ((g,), start), found in windows.items():
        tally = Counter(arrival.event.c for arrival in found)
        tallies.append(tally)
        ranked = sorted(tally.items(), key=lambda pair: (-pair[1], pair[0]))[:3]
        expected += [TopCountries(g, start, rank, c, n) for rank, (c, n) in enumerate(ranked, 1)]
    assert any(len(tally) > 3 for tally in tallies) and any(len(tally) < 3 for tally in tallies)
    assert any(len(set(tally.values())) < len(tally) for tally in tallies if len(tally) > 3)
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, top.table) == keyed(top.table, expected)


class TopSites(msgspec.Struct):
    sensor: str
    start_ms: int
    end_ms: int
    rank: int
    site: str
    readings: int


def test_top_k_over_hopping_windows_rewrites_its_ranks_as_they_change(settings: Settings) -> None:
    top = TopK(Hopping(20_000, 10_000), TopSites, by="sensor", item="site", k=2,
               score="readings", emit="update")  # fmt: skip
    app = App("tops", [READINGS], [], {READINGS.name: top})
    settings = settings.replace(partitions=1)
    first = [Reading("s", T0 + at, site, 0) for at, site in
             ((0, "b"), (1_000, "c"), (11_000, "c"))]  # fmt: skip
    with closing(run_events(app, first, settings)) as store:
        assert store.select(top.table, order_by="start_ms, rank") == [
            TopSites("s", T0 - 10_000, T0 + 10_000, 1, "b", 1),
            TopSites("s", T0 - 10_000, T0 + 10_000, 2, "c", 1),
            TopSites("s", T0, T0 + 20_000, 1, "c", 2),
            TopSites("s", T0, T0 + 20_000, 2, "b", 1),
            TopSites("s", T0 + 10_000, T0 + 30_000, 1, "c", 1),
        ]  # fmt: skip
    more = [Reading("s", T0 + at, site, 0) for at, site in ((2_000, "a"), (3_000, "a"))]
    with closing(run_events(app, more, settings)) as store:
        assert store.select(top.table, "start_ms < ?", (T0 + 10_000,), "start_ms, rank") == [
            TopSites("s", T0 - 10_000, T0 + 10_000, 1, "a", 2),
            TopSites("s", T0 - 10_000, T0 + 10_000, 2, "b", 1),
            TopSites("s", T0, T0 + 20_000, 1, "a", 2),
            TopSites("s", T0, T0 + 20_000, 2, "c", 2),
        ]  # fmt: skip


class Visit(msgspec.Struct):
    who: str
    ts: int
    page: str | None


class TopPages(msgspec.Struct):
    who: str
    start_ms: int
    rank: int
    page: str | None
    events: int


def test_top_k_ranks_a_missing_value_after_the_values_of_its_score(settings: Settings) -> None:
    visits = Stream("visits", Visit, key="who", time="ts")
    top = TopK(Tumbling(60_000), TopPages, by="who", item="page", k=3, emit="update")
    app = App("tops", [visits], [], {visits.name: top})
    events = [Visit("a", T0 + n, page) for n, page in enumerate([None, "/b", "/a", None, "/b"])]
    with closing(run_events(app, events, settings)) as store:
        assert store.select(top.table, order_by="rank") == [
            TopPages("a", T0, 1, "/b", 2), TopPages("a", T0, 2, None, 2),
            TopPages("a", T0, 3, "/a", 1),
        ]  # fmt: skip
        assert store.dead_letters(app.group(visits)) == []


def test_top_k_takes_a_positive_k_and_tumbling_or_hopping_windows() -> None:
    with pytest.raises(AppError, match="TopK: k must be a positive whole number, got 0"):
        TopK(Tumbling(60_000), TopCountries, by="g", item="c", k=0)
    with pytest.raises(AppError, match="TopK: windows are Tumbling or Hopping"):
        TopK(object(), TopCountries, by="g", item="c", k=3)  # type: ignore[arg-type]


class LastReading(msgspec.Struct):
    sensor: str
    time_ms: int
    site: str
    value: int


class SiteLast(msgspec.Struct):
    site: str
    at: int
    sensor: str


@RESTARTS
def test_latest_keeps_each_keys_latest_event_whatever_order_they_come_in(
    backend_settings: Settings, restarts: int
) -> None:
    settings = backend_settings
    events = readings(1500, seed=restarts)
    by_sensor = Latest(LastReading, by="sensor")
    by_site = Latest(SiteLast, by="site", time="at",
                     row=lambda r, time_ms: SiteLast(r.site, time_ms, r.sensor))  # fmt: skip
    app = App("latest", [READINGS], [], {READINGS.name: [by_sensor, by_site]})
    assert sorted(events, key=lambda r: r.ts) != events  # out of order
    last = {r.sensor: r for r in sorted(events, key=lambda r: r.ts)}
    per_site = {r.site: r for r in sorted(events, key=lambda r: r.ts)}
    sites_partitions = {arrival.partition for arrival in arrivals(READINGS, events, settings).events
                        if arrival.event.site == "site0"}  # fmt: skip
    assert len(sites_partitions) > 1  # a site's latest is found over partitions
    with closing(run_events(app, events, settings, restarts=restarts)) as store:
        assert stored(store, by_sensor.table) == keyed(by_sensor.table, [
            LastReading(r.sensor, r.ts, r.site, r.value) for r in last.values()])  # fmt: skip
        assert stored(store, by_site.table) == keyed(by_site.table, [
            SiteLast(r.site, r.ts, r.sensor) for r in per_site.values()])  # fmt: skip


def test_latest_takes_an_event_later_than_the_allowed_lateness(settings: Settings) -> None:
    """The store compares the times, so no event is too late to be a key's latest."""
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    latest = Latest(LastReading, by="sensor")
    app = App("latest", [READINGS], [], {READINGS.name: latest})
    events = [Reading("s1", T0, "a", 1), Reading("s2", T0 + 2 * lateness_ms, "a", 2),
              Reading("s1", T0 + lateness_ms - 1, "b", 3),  # late, and s1's latest
              Reading("s1", T0 + 1, "c", 4)]  # fmt: skip
    with closing(run_events(app, events, settings.replace(partitions=1))) as store:
        assert store.select(latest.table, order_by="sensor") == [
            LastReading("s1", T0 + lateness_ms - 1, "b", 3),
            LastReading("s2", T0 + 2 * lateness_ms, "a", 2),
        ]  # fmt: skip
        assert store.dead_letters(app.group(READINGS)) == []


def test_latest_on_a_tie_of_times_keeps_the_first_event_of_the_log(settings: Settings) -> None:
    latest = Latest(LastReading, by="sensor")
    app = App("latest", [READINGS], [], {READINGS.name: latest})
    settings = settings.replace(partitions=1, batch_max_events=2)
    events = [Reading("s1", T0, site, n) for n, site in enumerate("abcde")]
    with closing(run_events(app, events, settings)) as store:
        assert store.select(latest.table) == [LastReading("s1", T0, "a", 0)]
