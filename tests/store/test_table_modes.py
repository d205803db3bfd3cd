"""Table modes the operator library writes through: 'latest' (the row of the highest
event time wins, whatever order rows are written in) and 'add' tables whose columns
merge by min, max or replace; on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import msgspec
import pytest

from kappaflow.errors import AppError
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.store.base import PartitionCommit, Table
from kappaflow.store.tables import Merge


class Seen(msgspec.Struct):
    who: str
    at_ms: int
    page: str


class Span(msgspec.Struct):
    url: str
    hits: int
    first_ms: int
    last_ms: int
    label: str
    low: int | None = None


SEEN = Table.of(Seen, key="who", mode="latest", time="at_ms")
MERGES: dict[str, Merge] = {"first_ms": "min", "last_ms": "max", "label": "replace", "low": "min"}
SPANS = Table.of(Span, key="url", mode="add", merge=MERGES)


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[Store]:
    store = open_store(backend_settings)
    store.create_tables([SEEN, SPANS])
    store.claim("g", [0], "w")
    yield store
    store.close()


def commit(store: Store, rows: dict[str, list[msgspec.Struct]]) -> None:
    store.commit("g", [PartitionCommit(0, 1, 1, b"")], rows)


def test_a_latest_table_keeps_the_row_of_the_highest_time_within_one_write(store: Store) -> None:
    commit(store, {SEEN.name: [Seen("a", 5, "/5"), Seen("a", 3, "/3"), Seen("b", 3, "/3"),
                               Seen("b", 9, "/9"), Seen("b", 7, "/7")]})  # fmt: skip
    assert store.select(SEEN, order_by="who") == [Seen("a", 5, "/5"), Seen("b", 9, "/9")]


def test_a_latest_table_keeps_the_row_of_the_highest_time_across_writes(store: Store) -> None:
    commit(store, {SEEN.name: [Seen("a", 5, "/5")]})
    commit(store, {SEEN.name: [Seen("a", 4, "/4")]})
    store.upsert({SEEN.name: [Seen("a", 1, "/1")]})
    assert store.select(SEEN) == [Seen("a", 5, "/5")]
    commit(store, {SEEN.name: [Seen("a", 6, "/6")]})
    assert store.select(SEEN) == [Seen("a", 6, "/6")]


def test_on_a_tie_of_times_the_first_write_stays(store: Store) -> None:
    commit(store, {SEEN.name: [Seen("a", 5, "/first"), Seen("a", 5, "/second")]})
    assert store.select(SEEN) == [Seen("a", 5, "/first")]
    commit(store, {SEEN.name: [Seen("a", 5, "/third")]})
    assert store.select(SEEN) == [Seen("a", 5, "/first")]


def test_a_latest_table_ends_the_same_whatever_order_rows_come_in(store: Store) -> None:
    rng = random.Random(7)
    times = rng.sample(range(10_000), 200)  # no tie to settle by the order of writes
    rows = [Seen(f"u{rng.randrange(5)}", at_ms, f"/{at_ms}") for at_ms in times]
    latest = {row.who: row for row in sorted(rows, key=lambda row: row.at_ms)}
    for at in range(0, len(rows), 30):
        commit(store, {SEEN.name: rows[at : at + 30]})
    assert store.select(SEEN, order_by="who") == [latest[who] for who in sorted(latest)]


def test_an_add_table_merges_columns_by_min_max_and_replace(store: Store) -> None:
    commit(store, {SPANS.name: [Span("/a", 2, 50, 60, "one", 7), Span("/b", 1, 10, 10, "b")]})
    commit(store, {SPANS.name: [Span("/a", 3, 40, 55, "two", 9), Span("/a", 1, 70, 80, "three")]})
    store.upsert({SPANS.name: [Span("/b", 4, 30, 5, "bee", 3)]})
    assert store.select(SPANS, order_by="url") == [
        Span("/a", 6, 40, 80, "three", 7), Span("/b", 5, 10, 10, "bee", 3)
    ]  # fmt: skip


def test_a_min_or_max_of_a_value_and_none_is_the_value_on_both_stores(store: Store) -> None:
    commit(store, {SPANS.name: [Span("/a", 1, 5, 5, "x", None)]})
    commit(store, {SPANS.name: [Span("/a", 1, 5, 5, "x", 4)]})
    commit(store, {SPANS.name: [Span("/a", 1, 5, 5, "x", None)]})
    assert store.select(SPANS) == [Span("/a", 3, 5, 5, "x", 4)]


COLUMNS = (("k", "TEXT"), ("n", "INTEGER"), ("t", "INTEGER"), ("label", "TEXT"))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"mode": "latest"}, "table t: a 'latest' table, and only one, names its column of "
                             "event time (time=), one of k, n, t, label"),
        ({"mode": "latest", "time": "when"}, "a 'latest' table, and only one, names its column"),
        ({"time": "t"}, "a 'latest' table, and only one, names its column of event time"),
        ({"mode": "latest", "time": "t"}, "table t: column t, the event time of a 'latest' "
                                          "table, may be NULL"),
        ({"mode": "replace", "merge": (("n", "max"),)},
         "table t: merge names columns of an 'add' table outside its key, got (('n', 'max'),)"),
        ({"mode": "add", "merge": (("k", "max"),)}, "merge names columns of an 'add' table "
                                                   "outside its key, got (('k', 'max'),)"),
        ({"mode": "add", "merge": (("z", "max"),)}, "merge names columns of an 'add' table"),
        ({"mode": "add", "merge": (("n", "sum"), ("label", "max"))},
         "table t: column n merges by 'sum'; a merge is add, min, max or replace"),
        ({"mode": "add"}, "column label is TEXT, but an 'add' table adds up"),
        ({"mode": "lastest", "time": "t"}, "table t: mode 'lastest' is not one of replace, add, "
                                           "distinct, latest"),
    ],
)  # fmt: skip
def test_table_options_that_do_not_fit_are_named(options: dict, problem: str) -> None:
    with pytest.raises(AppError, match=re.escape(problem)):
        Table("t", COLUMNS, key=("k",), **options)


def test_an_add_table_may_keep_text_it_merges_otherwise_than_by_adding() -> None:
    table = Table("t", COLUMNS, key=("k",), mode="add", merge=(("label", "replace"),))
    assert dict(table.merge) == {"label": "replace"}
