"""What the operators refuse when they are declared, and when an app binds them to its
stream: each error names the thing and the fix."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from reference import CLICKS

from kappaflow.app import App
from kappaflow.errors import AppError
from kappaflow.ops import (
    Aggregate,
    Hopping,
    Latest,
    Map,
    Measure,
    Pipeline,
    Session,
    Sliding,
    TopK,
    Tumbling,
    count,
    distinct,
    fold,
    largest,
    mean,
    smallest,
    total,
)
from kappaflow.store.base import Table


class ByCountry(msgspec.Struct):
    c: str
    start_ms: int
    value: float


class CountryRun(msgspec.Struct):
    c: str
    start_ms: int
    end_ms: int
    value: float


def app_of(processor: Any) -> App:
    return App("errors", [CLICKS], [], {CLICKS.name: processor})


def longest(run: int, _: Any) -> int:
    return run + 1


@pytest.mark.parametrize(
    ("window", "emit", "measure", "why"),
    [
        (Tumbling(60_000), "update", mean("hc"), "value=mean()"),
        (Tumbling(60_000), "update", distinct("tz"), "value=distinct()"),
        (Hopping(120_000, 60_000), "update", fold(longest, 0), "value=longest()"),
        (Tumbling(60_000), "final", count(), "emit='final'"),
        (Sliding(60_000), "update", total("nk"), "Sliding windows"),
        (Session(60_000), "final", largest("hc"), "Session windows, emit='final'"),
    ],
)  # fmt: skip
def test_what_needs_a_groups_events_in_one_partition_is_refused_by_another_field(
    window: Any, emit: str, measure: Measure, why: str
) -> None:
    into = CountryRun if isinstance(window, Sliding | Session) else ByCountry
    aggregate = Aggregate(window, into, by="c", emit=emit, value=measure)  # type: ignore[arg-type]
    problem = (f"Aggregate into {aggregate.table.name}: groups by c hold events of many keys "
               "of stream 'clicks' (keyed by g), in many partitions; ")  # fmt: skip
    for processor in (aggregate, [aggregate], Pipeline(Map(str)).to(aggregate)):
        with pytest.raises(AppError, match=re.escape(problem + why)) as refused:
            app_of(processor)
        assert "Group by g as well" in str(refused.value)


@pytest.mark.parametrize("measure", [count(), total("nk"), smallest("hc"), largest("hc")])
def test_measures_the_store_merges_may_group_by_any_field(measure: Measure) -> None:
    aggregate = Aggregate(Hopping(120_000, 60_000), ByCountry, by="c", value=measure)
    assert aggregate.merged
    assert app_of(aggregate).all_tables[0].mode == "add"


class ByLinkCountry(msgspec.Struct):
    g: str
    c: str
    start_ms: int
    value: float


@pytest.mark.parametrize("measure", [mean("hc"), distinct("tz"), fold(longest, 0), count()])
def test_any_measure_may_group_by_the_stream_key_and_more(measure: Measure) -> None:
    aggregate = Aggregate(Tumbling(60_000), ByLinkCountry, by=("g", "c"), emit="final",
                          value=measure)  # fmt: skip
    assert not aggregate.merged
    assert app_of(aggregate).all_tables[0].mode == "replace"


def test_top_k_groups_by_the_stream_key() -> None:
    class Top(msgspec.Struct):
        c: str
        start_ms: int
        rank: int
        u: str
        events: int

    with pytest.raises(AppError, match=re.escape(
            "TopK into top: by= must name g, the key of stream 'clicks'")):  # fmt: skip
        app_of(TopK(Tumbling(60_000), Top, by="c", item="u", k=3))


class Partial(msgspec.Struct):
    c: str
    views: int
    extra: str


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: Aggregate(Tumbling(60_000), Partial, by="c", views=count()),
         "Aggregate: the fields of Partial are its rows' columns: c, start_ms, views, [end_ms] "
         "(those in brackets optional); missing start_ms; not filled in: extra"),
        (lambda: Aggregate(Sliding(60_000), ByCountry, by="c", value=count()),
         "Aggregate: the fields of ByCountry are its rows' columns: c, end_ms, value, "
         "[start_ms] (those in brackets optional); missing end_ms"),
        (lambda: TopK(Tumbling(60_000), ByCountry, by="c", item="u", k=2),
         "TopK: the fields of ByCountry are its rows' columns: c, start_ms, rank, u, events, "
         "[end_ms] (those in brackets optional); missing rank, u, events; not filled in: value"),
        (lambda: Aggregate(Tumbling(60_000), dict, by="c", views=count()),
         "into= takes a msgspec.Struct class (the rows' type), got <class 'dict'>"),
        (lambda: Latest(dict, by="c"), "into= takes a msgspec.Struct class"),
        (lambda: Aggregate(Tumbling(60_000), ByCountry, by="c"),
         "Aggregate: name at least one measure, such as views=count()"),
        (lambda: Aggregate(Tumbling(60_000), ByCountry, by="c", emit="close", value=count()),
         "Aggregate: emit is 'final' or 'update', got 'close'"),
        (lambda: Hopping(60_000, 7_000), "Hopping: every_ms (7000) must divide size_ms (60000)"),
        (lambda: Tumbling(0), "Tumbling: size_ms must be a positive whole number of "
                              "milliseconds, got 0"),
        (lambda: Sliding(1.5), "Sliding: size_ms must be a positive whole number"),
        (lambda: Session(60_000, idle_ms=-1), "Session: idle_ms must be a positive whole"),
    ],
)  # fmt: skip
def test_declarations_that_do_not_fit_are_named(build: Any, problem: str) -> None:
    with pytest.raises(AppError, match=re.escape(problem)):
        build()


def test_two_operators_writing_one_table_are_refused() -> None:
    minutes = Aggregate(Tumbling(60_000), ByCountry, by="c", value=count())
    hours = Aggregate(Tumbling(3_600_000), ByCountry, by="c", value=count())
    problem = "app 'errors': two operators, or two different tables, write table by_country"
    with pytest.raises(AppError, match=problem):
        app_of([minutes, hours])
    with pytest.raises(AppError, match=problem):
        App("errors", [CLICKS], [Table("by_country", (("c", "TEXT"),), key=("c",))],
            {CLICKS.name: minutes})  # fmt: skip
    hourly = Aggregate(Tumbling(3_600_000), ByCountry, by="c", value=count(), table="hourly")
    assert [t.name for t in app_of([minutes, hourly]).all_tables] == ["by_country", "hourly"]
    assert App("listed", [CLICKS], [minutes.table], {CLICKS.name: minutes}).all_tables == [
        minutes.table
    ]  # fmt: skip
