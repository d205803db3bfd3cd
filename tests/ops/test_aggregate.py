"""`Aggregate` over tumbling and hopping windows, through the real log, worker and
store, with and without restarts, against the same aggregates computed in plain Python:
the merged path (groups spanning partitions, partial measures merged by the store) and
the keyed path (groups of the stream's key, windows kept in keyed state)."""

from __future__ import annotations

from contextlib import closing

import msgspec
import pytest
from reference import (
    CLICK_MEASURES,
    CLICK_REFERENCE,
    CLICKS,
    READINGS,
    T0,
    LinkStats,
    Reading,
    arrivals,
    keyed,
    readings,
    real_clicks,
    stored,
    window_rows,
    windowed,
)

from kappaflow.app import App
from kappaflow.ops import (
    Aggregate,
    Hopping,
    Tumbling,
    count,
    largest,
    mean,
    smallest,
    total,
)
from kappaflow.settings import Settings
from kappaflow.testing import run_events

CLICK_EVENTS = real_clicks()
RESTARTS = pytest.mark.parametrize("restarts", [0, 3])


class CountryClicks(msgspec.Struct):
    c: str
    start_ms: int
    end_ms: int
    clicks: int
    nk_total: int
    first_hc: int
    last_hc: int


@pytest.mark.parametrize(
    ("backend_settings", "window", "restarts"),
    [("sqlite", Tumbling(60_000), 0), ("sqlite", Tumbling(60_000), 3),
     ("sqlite", Hopping(300_000, 60_000), 0), ("sqlite", Hopping(300_000, 60_000), 3),
     ("postgres", Hopping(300_000, 60_000), 3)],
    indirect=["backend_settings"],
)  # fmt: skip
def test_groups_over_partitions_merge_in_the_store_to_exact_totals(
    backend_settings: Settings, window: Tumbling | Hopping, restarts: int
) -> None:
    settings = backend_settings
    aggregate = Aggregate(window, CountryClicks, by="c", clicks=count(), nk_total=total("nk"),
                          first_hc=smallest("hc"), last_hc=largest("hc"))  # fmt: skip
    assert aggregate.merged and aggregate.table.mode == "add"
    app = App("countries", [CLICKS], [], {CLICKS.name: aggregate})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    spread = {a.event.c for a in arrived.events if a.partition == 0}
    spread &= {a.event.c for a in arrived.events if a.partition == 1}
    assert len(spread) > 10 and not arrived.late  # countries of several partitions
    merged = {name: CLICK_REFERENCE[name] for name in ("clicks", "nk_total", "first_hc", "last_hc")}
    expected = window_rows(CountryClicks, ["c"], windowed(arrived.events, ["c"], window),
                           window.size_ms, merged)  # fmt: skip
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)
        assert store.dead_letters(app.group(CLICKS)) == []


def link_stats(window: Tumbling | Hopping, emit: str) -> Aggregate:
    return Aggregate(window, LinkStats, by="g", emit=emit, **CLICK_MEASURES)  # type: ignore[arg-type]


@RESTARTS
@pytest.mark.parametrize("window", [Tumbling(60_000), Hopping(300_000, 60_000)])
def test_every_measure_of_the_key_with_emit_update_ends_at_its_value_over_all_events(
    settings: Settings, window: Tumbling | Hopping, restarts: int
) -> None:
    aggregate = link_stats(window, "update")
    assert not aggregate.merged and aggregate.table.mode == "replace"
    app = App("links", [CLICKS], [], {CLICKS.name: aggregate})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    expected = window_rows(LinkStats, ["g"], windowed(arrived.events, ["g"], window),
                           window.size_ms, CLICK_REFERENCE)  # fmt: skip
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)


@RESTARTS
@pytest.mark.parametrize("window", [Tumbling(60_000), Hopping(300_000, 60_000)])
def test_emit_final_writes_the_windows_the_watermark_passed_and_those_only(
    settings: Settings, window: Tumbling | Hopping, restarts: int
) -> None:
    aggregate = link_stats(window, "final")
    app = App("links", [CLICKS], [], {CLICKS.name: aggregate})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    windows = windowed(arrived.events, ["g"], window)
    passed = {(group, start): found for (group, start), found in windows.items()
              if start + window.size_ms <= arrived.watermarks[found[0].partition]}  # fmt: skip
    assert 0 < len(passed) < len(windows) - 10  # the last minutes' windows are open still
    expected = window_rows(LinkStats, ["g"], passed, window.size_ms, CLICK_REFERENCE)
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)


class SiteReadings(msgspec.Struct):
    site: str
    sensor: str
    start_ms: int
    readings: int
    low: int
    high: int
    mean_value: float


@RESTARTS
@pytest.mark.parametrize("emit", ["final", "update"])
def test_random_readings_by_two_fields_with_late_ones_dead_lettered(
    settings: Settings, emit: str, restarts: int
) -> None:
    events = readings(1500, seed=restarts)
    for at in (300, 700, 1100):  # a minute behind the readings around it: late
        events.insert(at, msgspec.structs.replace(events[at], ts=events[at].ts - 60_000))
    window = Hopping(20_000, 5_000)
    aggregate = Aggregate(window, SiteReadings, by=("site", "sensor"), emit=emit,  # type: ignore[arg-type]
                          readings=count(), low=smallest("value"), high=largest("value"),
                          mean_value=mean("value"))  # fmt: skip
    app = App("sites", [READINGS], [], {READINGS.name: aggregate})
    arrived = arrivals(READINGS, events, settings)
    assert len(arrived.late) == 3
    windows = windowed(arrived.events, ["site", "sensor"], window)
    if emit == "final":
        windows = {at: found for at, found in windows.items()
                   if at[1] + window.size_ms <= arrived.watermarks[found[0].partition]}  # fmt: skip
    expected = window_rows(SiteReadings, ["site", "sensor"], windows, window.size_ms, {
        "readings": len,
        "low": lambda found: min(r.value for r in found),
        "high": lambda found: max(r.value for r in found),
        "mean_value": lambda found: sum(r.value for r in found) / len(found),
    })  # fmt: skip
    with closing(run_events(app, events, settings, restarts=restarts)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)
        letters = store.dead_letters(app.group(READINGS))
        assert [(p, o) for p, o, _, _ in letters] == sorted((a.partition, a.offset)
                                                            for a in arrived.late)  # fmt: skip
        assert all(reason.startswith("late: ") for _, _, reason, _ in letters)


def test_emit_final_with_idle_partitions_closes_the_windows_the_idle_time_passes(
    settings: Settings,
) -> None:
    """After the idle timeout, a partition's watermark moves on by that much of event
    time: windows ending within it close, the later ones stay open."""
    window = Hopping(300_000, 60_000)
    aggregate = link_stats(window, "final")
    app = App("links", [CLICKS], [], {CLICKS.name: aggregate})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    idle_ms = round(settings.idle_timeout_s * 1000)
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    windows = windowed(arrived.events, ["g"], window)

    def ending_by(past_watermark_ms: int) -> dict:
        return {at: found for at, found in windows.items() if at[1] + window.size_ms
                <= arrived.watermarks[found[0].partition] + past_watermark_ms}  # fmt: skip

    passed = ending_by(lateness_ms + idle_ms)  # the partition's latest event, and the idle time
    assert len(ending_by(0)) < len(passed) < len(windows)
    expected = window_rows(LinkStats, ["g"], passed, window.size_ms, CLICK_REFERENCE)
    with closing(run_events(app, CLICK_EVENTS, settings, close=True)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)


class SensorReadings(msgspec.Struct):
    sensor: str
    start_ms: int
    readings: int
    total_value: int


def test_a_window_closes_when_the_watermark_reaches_its_end(settings: Settings) -> None:
    """A window [start, end) is final once no event below its end can come: the
    watermark (the highest time less the allowed lateness) at its end."""
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    aggregate = Aggregate(Tumbling(60_000), SensorReadings, by="sensor", emit="final",
                          readings=count(), total_value=total("value"))  # fmt: skip
    app = App("sensors", [READINGS], [], {READINGS.name: aggregate})
    settings = settings.replace(partitions=1)
    first = [Reading("s1", T0 + 59_999, "a", 1), Reading("s1", T0 + 60_000, "a", 2),
             Reading("s1", T0 + 59_999 + lateness_ms, "a", 4)]  # fmt: skip
    with closing(run_events(app, first, settings)) as store:
        assert store.select(aggregate.table) == []
    last = Reading("s1", T0 + 60_000 + lateness_ms, "a", 8)
    with closing(run_events(app, [last], settings)) as store:
        assert store.select(aggregate.table) == [SensorReadings("s1", T0, 1, 1)]
