"""Steps (`Filter`, `Map`, `FlatMap`, `Join`) in a `Pipeline`, and several processors
on one stream (`Fanout`, from a list or from ``Pipeline.to``), through the real log,
worker and store, with and without restarts, against plain Python."""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from reference import (
    CLICKS,
    READINGS,
    T0,
    Click,
    Reading,
    arrivals,
    initials,
    keyed,
    real_clicks,
    stored,
    window_rows,
    windowed,
)

from kappaflow.app import App, Batch, FunctionProcessor, Lookup, Output, State
from kappaflow.errors import AppError
from kappaflow.ops import (
    Aggregate,
    Fanout,
    Filter,
    FlatMap,
    Join,
    Latest,
    Map,
    Pipeline,
    Tumbling,
    count,
    distinct,
    fold,
    total,
)
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import Table
from kappaflow.testing import run_events

CLICK_EVENTS = real_clicks()
RESTARTS = pytest.mark.parametrize("restarts", [0, 3])
MINUTE = Tumbling(60_000)


class LinkMinute(msgspec.Struct):
    g: str
    start_ms: int
    clicks: int
    countries: int
    trail: str


def lower(click: Click) -> Click:
    return msgspec.structs.replace(click, c=click.c.lower())


def known_zone(click: Click) -> bool:
    return click.tz != "unknown"


def repeated(click: Click) -> list[Click]:
    """The click once, and again for each of its ``nk`` (0 or 1)."""
    return [click] * (1 + click.nk)


def link_minutes(emit: str = "update") -> Aggregate:
    return Aggregate(MINUTE, LinkMinute, by="g", emit=emit, clicks=count(),  # type: ignore[arg-type]
                     countries=distinct("c"), trail=fold(initials, "", "c"))  # fmt: skip


def expected_minutes(clicks: list[Click], settings: Settings) -> list[LinkMinute]:
    arrived = arrivals(CLICKS, clicks, settings)
    return window_rows(LinkMinute, ["g"], windowed(arrived.events, ["g"], MINUTE), 60_000, {
        "clicks": len,
        "countries": lambda found: len({c.c for c in found}),
        "trail": lambda found: "".join(c.c[0] for c in found),
    })  # fmt: skip


@RESTARTS
def test_filter_map_and_flat_map_feed_an_aggregate(settings: Settings, restarts: int) -> None:
    minutes = link_minutes()
    pipeline = Pipeline(Filter(known_zone), Map(lower), FlatMap(repeated)).to(minutes)
    app = App("steps", [CLICKS], [], {CLICKS.name: pipeline})
    assert app.all_tables == [minutes.table]
    stepped = [c for click in CLICK_EVENTS if known_zone(click) for c in repeated(lower(click))]
    assert len(CLICK_EVENTS) - 500 < len(stepped) != len(CLICK_EVENTS)
    expected = expected_minutes(stepped, settings)
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, minutes.table) == keyed(minutes.table, expected)
        assert store.dead_letters(app.group(CLICKS)) == []


class Region(msgspec.Struct):
    code: str
    region: str


REGIONS = Table.of(Region, key="code")
REGION_ROWS = [Region("US", "americas"), Region("BR", "americas"), Region("CA", "americas"),
               Region("GB", "europe"), Region("DE", "europe"), Region("JP", "asia")]  # fmt: skip


class Placed(msgspec.Struct):
    g: str
    t: int
    region: str


class RegionMinute(msgspec.Struct):
    region: str
    start_ms: int
    clicks: int


def place(click: Click, region: str | None) -> Placed:
    return Placed(click.g, click.t, region or "elsewhere")


@RESTARTS
@pytest.mark.parametrize("missing", ["refuse", "drop", "keep"])
def test_a_join_with_reference_data_refuses_drops_or_keeps_what_it_does_not_find(
    settings: Settings, missing: str, restarts: int
) -> None:
    regions = Lookup(REGIONS, lambda rows: {row.code: row.region for row in rows})
    per_region = Aggregate(MINUTE, RegionMinute, by="region", clicks=count())
    join = Join(regions, on="c", combine=place, missing=missing)  # type: ignore[arg-type]
    app = App("regions", [CLICKS], [], {CLICKS.name: Pipeline(join).to(per_region)},
              lookups=[regions])  # fmt: skip
    assert app.all_tables == [per_region.table, REGIONS]
    found = {row.code: row.region for row in REGION_ROWS}
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    unmatched = [a for a in arrived.events if a.event.c not in found]
    assert 500 < len(unmatched) < len(arrived.events) - 500
    placed = [place(a.event, found.get(a.event.c)) for a in arrived.events
              if missing == "keep" or a.event.c in found]  # fmt: skip
    counts = Counter((p.region, p.t * 1000 - p.t * 1000 % 60_000) for p in placed)
    expected = [RegionMinute(region, start, n) for (region, start), n in counts.items()]
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts,
                            reference={REGIONS.name: REGION_ROWS})) as store:  # fmt: skip
        assert stored(store, per_region.table) == keyed(per_region.table, expected)
        letters = store.dead_letters(app.group(CLICKS))
        refused = sorted(unmatched if missing == "refuse" else [],
                         key=lambda a: (a.partition, a.offset))  # fmt: skip
        assert [(p, o, reason) for p, o, reason, _ in letters] == [
            (a.partition, a.offset, f"no match: {a.event.c!r} is not in region") for a in refused
        ]  # fmt: skip


def test_a_joins_lookup_is_loaded_though_the_app_does_not_list_it(settings: Settings) -> None:
    regions = Lookup(REGIONS, lambda rows: {row.code: row.region for row in rows})
    per_region = Aggregate(MINUTE, RegionMinute, by="region", clicks=count())
    join = Join(regions, on="c", combine=place, missing="drop")
    app = App("regions", [CLICKS], [], {CLICKS.name: [Pipeline(join).to(per_region)]})
    assert app.lookups == [regions] and REGIONS in app.all_tables
    found = {row.code for row in REGION_ROWS}
    with closing(run_events(app, CLICK_EVENTS, settings,
                            reference={REGIONS.name: REGION_ROWS})) as store:  # fmt: skip
        counted = sum(row.clicks for row in store.select(per_region.table))
    assert counted == sum(click.c in found for click in CLICK_EVENTS) > 500


def test_a_join_reads_the_reference_data_in_force_at_each_events_time(
    settings: Settings,
) -> None:
    """A region moved part way through the clicks: those before read the first upload,
    the later ones the second, as they would in a replay of the log."""
    regions = Lookup(Table.of(Region, key="code", history=True),
                     lambda rows: {row.code: row.region for row in rows})  # fmt: skip
    per_region = Aggregate(MINUTE, RegionMinute, by="region", clicks=count())
    join = Join(regions, on="c", combine=place, missing="drop")
    app = App("regions", [CLICKS], [], {CLICKS.name: Pipeline(join).to(per_region)})
    arrived = arrivals(CLICKS, CLICK_EVENTS, settings)
    moved_ms = sorted(a.event.t * 1000 for a in arrived.events)[len(arrived.events) // 2]
    found = {row.code: row.region for row in REGION_ROWS}

    def region(click: Click) -> str:
        return "us" if click.c == "US" and click.t * 1000 >= moved_ms else found[click.c]

    placed = [place(a.event, region(a.event)) for a in arrived.events if a.event.c in found]
    assert {region(a.event) for a in arrived.events if a.event.c == "US"} == {"americas", "us"}
    counts = Counter((p.region, p.t * 1000 - p.t * 1000 % 60_000) for p in placed)
    expected = [RegionMinute(region, start, n) for (region, start), n in counts.items()]
    with closing(open_store(settings)) as store:
        store.create_tables(app.all_tables)
        store.upsert({REGIONS.name: REGION_ROWS}, valid_from_ms=0)
        store.upsert({REGIONS.name: [Region("US", "us")]}, valid_from_ms=moved_ms)
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=2)) as store:
        assert stored(store, per_region.table) == keyed(per_region.table, expected)


class LinkCountry(msgspec.Struct):
    g: str
    time_ms: int
    c: str


class LinkTotals(msgspec.Struct):
    g: str
    start_ms: int
    nk_total: int


class LinkCount(msgspec.Struct):
    g: str
    clicks: int


LINK_COUNTS = Table.of(LinkCount, key="g")


def running_counts(counts: State[int], batch: Batch) -> dict[str, list[LinkCount]]:
    """A processor written by hand beside the library's: each link's clicks so far."""
    for click in batch.events:
        counts.set(click.g, counts.get(click.g, 0) + 1)
    return {LINK_COUNTS.name: [LinkCount(g, counts.get(g)) for g in {c.g for c in batch.events}]}


@RESTARTS
@pytest.mark.parametrize("shape", ["list", "pipeline"])
def test_several_processors_of_one_stream_each_keep_their_own_state(
    settings: Settings, shape: str, restarts: int
) -> None:
    minutes = link_minutes(emit="final")
    totals = Aggregate(MINUTE, LinkTotals, by="g", emit="final", nk_total=total("nk"))
    latest = Latest(LinkCountry, by="g", row=lambda click, time_ms: LinkCountry(
        click.g, time_ms, click.c))  # fmt: skip
    processors: Any = [minutes, totals, latest, FunctionProcessor(running_counts, int)]
    if shape == "pipeline":
        processors = Pipeline(Map(lower)).to(*processors)
    app = App("fanned", [CLICKS], [LINK_COUNTS], {CLICKS.name: processors})
    assert isinstance(app.processors[CLICKS.name], Fanout | Pipeline)
    assert app.all_tables == [LINK_COUNTS, minutes.table, totals.table, latest.table]
    clicks = [lower(c) for c in CLICK_EVENTS] if shape == "pipeline" else CLICK_EVENTS
    arrived = arrivals(CLICKS, clicks, settings)
    windows = {at: found for at, found in windowed(arrived.events, ["g"], MINUTE).items()
               if at[1] + 60_000 <= arrived.watermarks[found[0].partition]}  # fmt: skip
    expected = window_rows(LinkMinute, ["g"], windows, 60_000, {
        "clicks": len,
        "countries": lambda found: len({c.c for c in found}),
        "trail": lambda found: "".join(c.c[0] for c in found),
    })  # fmt: skip
    expected_totals = window_rows(LinkTotals, ["g"], windows, 60_000, {
        "nk_total": lambda found: sum(c.nk for c in found)})  # fmt: skip
    last: dict[str, Any] = {}
    for arrival in arrived.events:  # the latest in time; on a tie, the first in the log
        if arrival.event.g not in last or arrival.time_ms > last[arrival.event.g].time_ms:
            last[arrival.event.g] = LinkCountry(arrival.event.g, arrival.time_ms, arrival.event.c)
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=restarts)) as store:
        assert stored(store, minutes.table) == keyed(minutes.table, expected)
        assert stored(store, totals.table) == keyed(totals.table, expected_totals)
        assert stored(store, latest.table) == keyed(latest.table, last.values())
        clicks_per_link = Counter(arrival.event.g for arrival in arrived.events)
        assert stored(store, LINK_COUNTS) == keyed(LINK_COUNTS, [
            LinkCount(g, n) for g, n in clicks_per_link.items()])  # fmt: skip


def batch(*readings: Reading) -> Batch:
    return Batch(0, list(range(10, 10 + len(readings))), list(readings),
                 [r.ts for r in readings], T0)  # fmt: skip


def test_an_event_refused_by_several_processors_is_one_dead_letter_with_the_first_reason() -> None:
    def refuse_odd(state: State[None], batch: Batch) -> Output[State[None]]:
        pairs = zip(batch.offsets, batch.events, strict=True)
        odd = [(offset, f"odd {offset}") for offset, r in pairs if r.value % 2]
        return Output(state, {}, odd)

    sites = Lookup(REGIONS, lambda rows: {"a": "x"})
    twice = Pipeline(FlatMap(lambda r: [r, r]), Join(sites, "site", lambda r, found: r)).to(
        FunctionProcessor(refuse_odd, None))  # fmt: skip
    fanout = Fanout([twice, FunctionProcessor(refuse_odd, None)])
    readings = [Reading("s", T0, "a", 1), Reading("s", T0, "b", 2), Reading("s", T0, "b", 3),
                Reading("s", T0, "a", 4)]  # fmt: skip
    output = fanout.process(fanout.initial_state(), batch(*readings))
    assert list(output.dead_letters) == [
        (10, "odd 10"), (11, "no match: 'b' is not in region"),
        (12, "no match: 'b' is not in region"),
    ]  # fmt: skip


def test_a_pipeline_needs_its_processors_and_a_join_a_known_choice() -> None:
    with pytest.raises(AppError, match=r"Pipeline\(\*steps\)\.to\(processor\)"):
        Pipeline(Filter(known_zone)).initial_state()
    with pytest.raises(AppError, match=r"Pipeline\.to: name the processors"):
        Pipeline(Filter(known_zone)).to()
    regions = Lookup(REGIONS, lambda rows: {})
    with pytest.raises(AppError, match="Join: missing is 'refuse', 'drop' or 'keep', got 'skip'"):
        Join(regions, "c", place, missing="skip")  # type: ignore[arg-type]


def test_a_pipeline_judges_lateness_as_its_processor_does(settings: Settings) -> None:
    latest = Latest(LinkCountry, by="g", row=lambda r, t: LinkCountry(r.sensor, t, r.site))
    assert Pipeline(Map(lower)).to(latest).judges_lateness
    assert not Pipeline(Map(lower)).to(latest, link_minutes()).judges_lateness
    app = App("late", [READINGS], [], {READINGS.name: Pipeline(Filter(bool)).to(latest)})
    late = [Reading("a", T0 + 100_000, "x", 1), Reading("b", T0, "y", 2)]
    with closing(run_events(app, late, settings.replace(partitions=1))) as store:
        assert len(store.select(latest.table)) == 2


def test_the_keys_of_every_processor_of_a_stream_are_shown(settings: Settings) -> None:
    """`kappaflow_state_keys` counts the keys of each partition's operators in a list,
    as the store keeps them (a stateless one, `Latest`, has none)."""
    latest = Latest(LinkCountry, by="g", row=lambda click, time_ms: LinkCountry(
        click.g, time_ms, click.c))  # fmt: skip
    processors = [link_minutes(emit="final"), latest, FunctionProcessor(running_counts, int)]
    app = App(
        "counted", [CLICKS], [LINK_COUNTS], {CLICKS.name: Pipeline(Map(lower)).to(*processors)}
    )
    group = app.group(CLICKS)
    with closing(run_events(app, CLICK_EVENTS, settings, restarts=2)) as store:
        kept = {p: len(claim.keys) for p, claim in store.claim(group, range(4), "test").items()}
    shown = {p: REGISTRY.get_sample_value("kappaflow_state_keys",
                                          {"group": group, "partition": str(p)})
             for p in range(4)}  # fmt: skip
    assert shown == kept and all(kept.values())
