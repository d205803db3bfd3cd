"""`Aggregate` over sliding and session windows, through the real log, worker and
store, with and without restarts, against the same windows computed in plain Python."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import msgspec
import pytest
from reference import (
    CLICK_MEASURES,
    CLICK_REFERENCE,
    CLICKS,
    READINGS,
    T0,
    Arrival,
    LinkStats,
    Reading,
    arrivals,
    keyed,
    readings,
    real_clicks,
    stored,
)

from kappaflow.app import App
from kappaflow.errors import AppError
from kappaflow.ops import (
    Aggregate,
    Session,
    Sliding,
    Tumbling,
    count,
    distinct,
    fold,
    largest,
    mean,
    smallest,
    total,
)
from kappaflow.settings import Settings
from kappaflow.testing import run_events

CLICK_EVENTS = real_clicks()
RESTARTS = pytest.mark.parametrize("restarts", [0, 3])


def row(start_ms: int, end_ms: int, clicks: list[Any]) -> LinkStats:
    results = {name: measure(clicks) for name, measure in CLICK_REFERENCE.items()}
    return LinkStats(clicks[0].g, start_ms, end_ms, **results)


def by_key(arrived: list[Arrival]) -> dict[str, list[Arrival]]:
    found: dict[str, list[Arrival]] = {}
    for arrival in arrived:
        found.setdefault(arrival.event.g, []).append(arrival)
    return found


def sliding(arrived: list[Arrival], size_ms: int, before: dict[int, int] | None) -> list[LinkStats]:
    """A row per link and time of its clicks t: over its clicks in (t - size, t], in
    order of time (then of arrival); with ``before``, only those with t below their
    partition's watermark."""
    rows = []
    for found in by_key(arrived).values():
        found = sorted(found, key=lambda arrival: arrival.time_ms)  # stable: arrival order
        for end in sorted({arrival.time_ms for arrival in found}):
            if before is None or end < before[found[0].partition]:
                inside = [a.event for a in found if end - size_ms < a.time_ms <= end]
                rows.append(row(end - size_ms, end, inside))
    return rows


@RESTARTS
@pytest.mark.parametrize("emit", ["final", "update"])
def test_sliding_windows_aggregate_the_events_of_the_last_size_before_each(
    settings: Settings, emit: str, restarts: int
) -> None:
    size_ms = 90_000
    aggregate = Aggregate(Sliding(size_ms), LinkStats, by="g", emit=emit, **CLICK_MEASURES)  # type: ignore[arg-type]
    assert aggregate.table.key == ("g", "end_ms")
    app = App("links", [CLICKS], [], {CLICKS.name: aggregate})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    expected = sliding(arrived.events, size_ms, arrived.watermarks if emit == "final" else None)
    assert len(expected) > 1000
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)


class SensorWindow(msgspec.Struct):
    sensor: str
    start_ms: int
    end_ms: int
    readings: int
    total_value: int
    low: int
    high: int
    mean_value: float
    sites: int
    trail: str


def site_digits(trail: str, site: str) -> str:
    return trail + site[-1]


@RESTARTS
@pytest.mark.parametrize("emit", ["final", "update"])
def test_sliding_windows_over_random_readings_some_late(
    settings: Settings, emit: str, restarts: int
) -> None:
    size_ms = 15_000
    aggregate = Aggregate(Sliding(size_ms), SensorWindow, by="sensor", emit=emit,  # type: ignore[arg-type]
                          readings=count(), total_value=total("value"), low=smallest("value"),
                          high=largest("value"), mean_value=mean("value"), sites=distinct("site"),
                          trail=fold(site_digits, "", "site"))  # fmt: skip
    app = App("sensors", [READINGS], [], {READINGS.name: aggregate})
    events = readings(2000, seed=restarts, disorder_ms=40_000)  # some late, many near it
    arrived = arrivals(READINGS, events, settings)
    assert len(arrived.late) > 20
    expected = []
    for sensor in {r.sensor for r in events}:
        found = sorted((a for a in arrived.events if a.event.sensor == sensor),
                       key=lambda a: a.time_ms)  # fmt: skip
        for end in [a.time_ms for a in found]:
            if emit == "final" and end >= arrived.watermarks[found[0].partition]:
                continue
            inside = [a.event for a in found if end - size_ms < a.time_ms <= end]
            values = [r.value for r in inside]
            expected.append(SensorWindow(sensor, end - size_ms, end, len(inside), sum(values),
                                         min(values), max(values), sum(values) / len(values),
                                         len({r.site for r in inside}),
                                         "".join(r.site[-1] for r in inside)))  # fmt: skip
    with closing(run_events(app, events, settings, restarts=restarts)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)
        letters = store.dead_letters(app.group(READINGS))
        assert [(p, o) for p, o, _, _ in letters] == sorted((a.partition, a.offset)
                                                            for a in arrived.late)  # fmt: skip


class SensorSlide(msgspec.Struct):
    sensor: str
    end_ms: int
    readings: int
    total_value: int


def test_a_sliding_window_holds_its_end_and_not_its_start(settings: Settings) -> None:
    """The window ending at t is (t - size, t]: an event the size before t is not in
    it, one a millisecond later is; an event out of order counts where its time puts
    it."""
    aggregate = Aggregate(Sliding(10_000), SensorSlide, by="sensor",
                          readings=count(), total_value=total("value"))  # fmt: skip
    app = App("sensors", [READINGS], [], {READINGS.name: aggregate})
    events = [Reading("s", T0 + at, "a", value) for at, value in
              ((0, 1), (10_000, 2), (10_001, 4), (5_000, 8), (20_001, 16))]  # fmt: skip
    with closing(run_events(app, events, settings.replace(partitions=1))) as store:
        assert store.select(aggregate.table, order_by="end_ms") == [
            SensorSlide("s", T0, 1, 1), SensorSlide("s", T0 + 5_000, 2, 9),
            SensorSlide("s", T0 + 10_000, 2, 10), SensorSlide("s", T0 + 10_001, 3, 14),
            SensorSlide("s", T0 + 20_001, 1, 16),
        ]  # fmt: skip


def test_a_sliding_window_is_final_once_the_watermark_is_past_its_end(settings: Settings) -> None:
    """An event at the watermark is on time: the window ending there is not final."""
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    aggregate = Aggregate(Sliding(10_000), SensorSlide, by="sensor", emit="final",
                          readings=count(), total_value=total("value"))  # fmt: skip
    app = App("sensors", [READINGS], [], {READINGS.name: aggregate})
    settings = settings.replace(partitions=1)
    first = [Reading("s", T0, "a", 1), Reading("s", T0 + lateness_ms, "a", 2)]
    with closing(run_events(app, first, settings)) as store:
        assert store.select(aggregate.table) == []
    with closing(run_events(app, [Reading("s", T0, "a", 4)], settings)) as store:
        assert store.select(aggregate.table) == [] and store.dead_letters(app.group(READINGS)) == []
    with closing(run_events(app, [Reading("s", T0 + lateness_ms + 1, "a", 8)], settings)) as store:
        assert store.select(aggregate.table) == [SensorSlide("s", T0, 2, 5)]


def sessions(arrived: list[Arrival], gap_ms: int, lateness_ms: int, close: bool) -> list[LinkStats]:
    """Each link's sessions (clicks no more than the gap apart, in order of time then
    of the log, equal clicks each counted); without ``close``, those that ended: more
    than the gap before the link's latest click less the lateness."""
    rows = []
    for found in by_key(arrived).values():
        ordered = sorted(found, key=lambda arrival: (arrival.time_ms, arrival.offset))
        runs = [[ordered[0]]]
        for arrival in ordered[1:]:
            if arrival.time_ms - runs[-1][-1].time_ms > gap_ms:
                runs.append([])
            runs[-1].append(arrival)
        watermark = max(a.time_ms for a in found) - lateness_ms
        rows += [row(run[0].time_ms, run[-1].time_ms, [a.event for a in run]) for run in runs
                 if close or run[-1].time_ms + gap_ms < watermark]  # fmt: skip
    return rows


@RESTARTS
@pytest.mark.parametrize("close", [False, True])
def test_session_windows_aggregate_each_run_of_clicks_once_it_ended(
    settings: Settings, close: bool, restarts: int
) -> None:
    window = Session(gap_ms=120_000)
    aggregate = Aggregate(window, LinkStats, by="g", emit="final", **CLICK_MEASURES)  # type: ignore[arg-type]
    assert aggregate.judges_lateness
    app = App("links", [CLICKS], [], {CLICKS.name: aggregate})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    expected = sessions(arrived.events, window.gap_ms, window.lateness_ms, close)
    assert len(expected) > 500 and not arrived.late
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts, close=close)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)
        assert store.dead_letters(app.group(CLICKS)) == []  # equal clicks each count


class SensorSession(msgspec.Struct):
    sensor: str
    start_ms: int
    end_ms: int
    readings: int


@RESTARTS
def test_random_sessions_with_events_late_for_their_key_dead_lettered(
    settings: Settings, restarts: int
) -> None:
    window = Session(gap_ms=4_000, lateness_ms=10_000)
    aggregate = Aggregate(window, SensorSession, by="sensor", emit="final", readings=count())
    app = App("sensors", [READINGS], [], {READINGS.name: aggregate})
    events = readings(1200, seed=restarts, step_ms=300, disorder_ms=5_000)
    for at in (200, 600, 1000):  # behind their sensor's latest by more than the lateness
        late = max(e.ts for e in events[:at] if e.sensor == events[at].sensor) - 10_001
        events.insert(at, msgspec.structs.replace(events[at], ts=late))
    arrived = arrivals(READINGS, events, settings)
    assert not arrived.late  # for the partition: the key's lateness is the operator's
    late_offsets = set()
    latest: dict[str, int] = {}
    for arrival in arrived.events:
        reading = arrival.event
        if reading.ts < latest.get(reading.sensor, reading.ts) - window.lateness_ms:
            late_offsets.add((arrival.partition, arrival.offset))
            continue
        latest[reading.sensor] = max(latest.get(reading.sensor, reading.ts), reading.ts)
    assert len(late_offsets) == 3
    kept = [a for a in arrived.events if (a.partition, a.offset) not in late_offsets]
    expected = []
    for sensor in sorted(latest):
        times = sorted(a.time_ms for a in kept if a.event.sensor == sensor)
        runs = [[times[0]]]
        for time_ms in times[1:]:
            if time_ms - runs[-1][-1] > window.gap_ms:
                runs.append([])
            runs[-1].append(time_ms)
        expected += [SensorSession(sensor, run[0], run[-1], len(run)) for run in runs]
    with closing(run_events(app, events, settings, restarts=restarts, close=True)) as store:
        assert stored(store, aggregate.table) == keyed(aggregate.table, expected)
        letters = store.dead_letters(app.group(READINGS))
        assert {(p, o) for p, o, _, _ in letters} == late_offsets
        assert all(reason.startswith("late") for _, _, reason, _ in letters)


def test_sessions_a_worker_restored_close_when_their_partition_is_idle(
    settings: Settings,
) -> None:
    aggregate = Aggregate(Session(gap_ms=4_000), SensorSession, by="sensor", emit="final",
                          readings=count())  # fmt: skip
    app = App("sensors", [READINGS], [], {READINGS.name: aggregate})
    events = [Reading("s1", T0, "a", 1), Reading("s1", T0 + 3_000, "a", 1),
              Reading("s2", T0 + 1_000, "a", 1)]  # fmt: skip
    with closing(run_events(app, events, settings)) as store:
        assert store.select(aggregate.table) == []  # open, within the lateness
    with closing(run_events(app, [], settings, close=True)) as store:
        assert store.select(aggregate.table, order_by="sensor") == [
            SensorSession("s1", T0, T0 + 3_000, 2), SensorSession("s2", T0 + 1_000, T0 + 1_000, 1)
        ]  # fmt: skip


class SensorMinute(msgspec.Struct):
    sensor: str
    start_ms: int
    readings: int


def test_sessions_beside_an_operator_that_keeps_no_idle_time_close_when_idle(
    settings: Settings,
) -> None:
    """In a list of processors, the session aggregate still gets the empty batches of
    the idle time passing; the tumbling aggregate beside it does not need them."""
    sessions = Aggregate(Session(gap_ms=4_000), SensorSession, by="sensor", emit="final",
                         readings=count())  # fmt: skip
    minutes = Aggregate(Tumbling(60_000), SensorMinute, by="sensor", readings=count())
    app = App("sensors", [READINGS], [], {READINGS.name: [minutes, sessions]})
    assert app.processors[READINGS.name].closes_idle  # type: ignore[union-attr]
    events = [Reading("s1", T0, "a", 1), Reading("s1", T0 + 3_000, "a", 1)]
    with closing(run_events(app, events, settings, close=True)) as store:
        assert store.select(sessions.table) == [SensorSession("s1", T0, T0 + 3_000, 2)]
        assert store.select(minutes.table) == [SensorMinute("s1", T0 - T0 % 60_000, 2)]


def test_session_windows_refuse_emit_update() -> None:
    with pytest.raises(AppError, match="session windows emit='final' only"):
        Aggregate(Session(60_000), SensorSession, by="sensor", emit="update", readings=count())
