"""Typed result tables: declared from a struct, written as structs, read back as
structs, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
from contextlib import closing
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import msgspec
import pytest

from kappaflow.app import App, Batch, FunctionProcessor, Lookup, Rows, State, Stream
from kappaflow.errors import AppError, StoreError
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.store.base import PartitionCommit, Table
from kappaflow.testing import run_events


class PageViews(msgspec.Struct):
    url: str
    window_ms: int
    views: int
    mean_s: float | None = None
    bot: bool = False
    day: date | None = None
    last_at: datetime | None = None
    digest: bytes = b""
    kind: Literal["page", "api"] = "page"


VIEWS = Table.of(PageViews, key=("url", "window_ms"))
T0 = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


class Hits(msgspec.Struct):
    day: str
    hits: int
    users: int = 0


class Visitor(msgspec.Struct, kw_only=True):
    day: str
    who: str


HITS = Table.of(Hits, key="day", mode="add")
VISITORS = Table.of(Visitor, key=("day", "who"), mode="distinct", counts=("hits", "users"))


@pytest.fixture
def store(backend_settings: Settings) -> Store:
    store = open_store(backend_settings)
    store.create_tables([VIEWS, HITS, VISITORS])
    store.claim("g", [0], "w")
    yield store
    store.close()


def commit(store: Store, rows: dict[str, list[Any]]) -> None:
    store.commit("g", [PartitionCommit(0, 1, 1, b"")], rows)


def test_a_struct_declares_the_columns_their_types_and_the_key() -> None:
    assert VIEWS.name == "page_views"
    assert VIEWS.columns == (
        ("url", "TEXT"), ("window_ms", "INTEGER"), ("views", "INTEGER"), ("mean_s", "REAL"),
        ("bot", "BOOLEAN"), ("day", "DATE"), ("last_at", "TIMESTAMP"), ("digest", "BLOB"),
        ("kind", "TEXT"),
    )  # fmt: skip
    assert VIEWS.key == ("url", "window_ms") and VIEWS.mode == "replace"
    assert VIEWS.not_null == ("views", "bot", "digest", "kind")
    assert (HITS.key, HITS.mode) == (("day",), "add")
    assert Table.of(Hits, key="day", name="daily").name == "daily"


class HTTPHits(msgspec.Struct):
    path: Annotated[str, msgspec.Meta(min_length=1)]
    n: Annotated[int, msgspec.Meta(ge=0)]


def test_names_come_from_the_struct_and_constraints_do_not_change_the_columns() -> None:
    table = Table.of(HTTPHits, key="path")
    assert (table.name, table.columns) == ("http_hits", (("path", "TEXT"), ("n", "INTEGER")))


@pytest.mark.parametrize(
    ("annotation", "shown"),
    [(list[int], "list[int]"), (int | str, "int | str"), (dict, "dict"),
     (Literal["a", 1], "Literal['a', 1]")],
)  # fmt: skip
def test_a_field_no_column_holds_is_named(annotation: Any, shown: str) -> None:
    odd = msgspec.defstruct("Odd", [("id", str), ("payload", annotation)])
    with pytest.raises(AppError, match=re.escape(f"table odd: field payload of Odd is {shown}")):
        Table.of(odd, key="id")


def test_a_key_field_may_not_be_none() -> None:
    with pytest.raises(AppError, match="key field mean_s of PageViews may be None"):
        Table.of(PageViews, key=("url", "mean_s"))


@pytest.mark.parametrize(
    ("name", "columns", "problem"),
    [
        ("page-views", (("k", "TEXT"),), "table 'page-views' is not a lower-case SQL identifier"),
        ("PageViews", (("k", "TEXT"),), "table 'PageViews' is not a lower-case SQL identifier"),
        ("1st", (("k", "TEXT"),), "table '1st' is not a lower-case SQL identifier"),
        ("x" * 64, (("k", "TEXT"),), "is not a lower-case SQL identifier"),
        ("order", (("k", "TEXT"),), "table 'order' is an SQL keyword"),
        ("kf_partitions", (("k", "TEXT"),), "names starting kf_ are the store's own"),
        ("views", (("k", "TEXT"), ("user", "TEXT")), "table views: column 'user' is an SQL"),
        ("views", (("k", "TEXT"), ("a b", "TEXT")), "column 'a b' is not a lower-case SQL"),
        ("views", (("k", "TEXT"), ("k", "TEXT")), "a column is named twice"),
        ("views", (("v", "TEXT"),), "its key ('k',) and not_null () must name some"),
    ],
)
def test_names_must_be_sql_identifiers(name: str, columns: Any, problem: str) -> None:
    with pytest.raises(AppError, match=re.escape(problem)):
        Table(name, columns, key=("k",))


def test_an_add_table_adds_numbers_only() -> None:
    with pytest.raises(AppError, match="column label is TEXT, but an 'add' table adds up"):
        Table("totals", (("k", "TEXT"), ("label", "TEXT")), key=("k",), mode="add")


def test_structs_are_written_and_read_back_as_structs(store: Store) -> None:
    rows = [
        PageViews("/a", 0, 3, 1.5, True, date(2026, 3, 1), T0, b"\x00\xff", "api"),
        PageViews("/b", 0, 1),
        PageViews("/a", 60_000, 2, last_at=T0.astimezone(timezone(timedelta(hours=2)))),
    ]
    commit(store, {VIEWS.name: rows})
    assert store.select(VIEWS, order_by="url, window_ms") == [rows[0], rows[2], rows[1]]
    found = store.select(VIEWS, "url = ? AND views >= ?", ("/a", 2), order_by="window_ms DESC")
    assert found == [rows[2], rows[0]] and type(found[0].bot) is bool
    assert store.select(VIEWS, "last_at >= ?", (T0 - timedelta(seconds=1),), "url", 1) == [rows[0]]
    assert store.select(VIEWS, "last_at > ?", (T0,)) == []
    assert store.select(VIEWS, "day = ?", (date(2026, 3, 1),)) == [rows[0]]


def test_a_typed_table_takes_tuples_in_its_column_order(store: Store) -> None:
    """What a columnar operator writes: its columns zipped, without a struct per row."""
    urls, views, n = ["/a", "/b"], [4, 5], 2
    blank = [None] * n
    zipped = zip(urls, [0] * n, views, blank, [False] * n, blank, blank, [b""] * n, ["page"] * n,
                 strict=True)  # fmt: skip
    row = ("/c", 0, 6, None, False, None, None, b"", "page")
    commit(store, {VIEWS.name: [*zipped, PageViews("/d", 0, 7), row]})
    assert [(v.url, v.views) for v in store.select(VIEWS, order_by="url")] == [
        ("/a", 4), ("/b", 5), ("/c", 6), ("/d", 7)
    ]  # fmt: skip


def test_rows_of_another_type_are_refused_and_nothing_is_written(store: Store) -> None:
    taken = re.escape("table page_views takes rows of PageViews (or tuples in its columns' ")
    with pytest.raises(StoreError, match=taken + "order[)], got Hits"):
        commit(store, {HITS.name: [Hits("d", 1)],
                       VIEWS.name: [PageViews("/a", 0, 1), Hits("d", 1)]})  # fmt: skip
    assert store.select(HITS) == [] and store.committed_offsets("g") == {0: 0}


def test_none_in_a_field_that_is_not_optional_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="writing table page_views"):
        commit(store, {VIEWS.name: [PageViews("/a", 0, None)]})  # type: ignore[arg-type]


def test_a_datetime_without_its_time_zone_is_refused(store: Store) -> None:
    naive = datetime(2026, 3, 1, 12, 30)
    with pytest.raises(StoreError, match="column last_at: 2026-03-01 12:30:00 has no time zone"):
        commit(store, {VIEWS.name: [PageViews("/a", 0, 1, last_at=naive)]})


def test_add_and_distinct_tables_take_structs(store: Store) -> None:
    visitors = [Visitor(day="d1", who="a"), Visitor(day="d1", who="b"), Visitor(day="d1", who="a")]
    commit(store, {HITS.name: [Hits("d1", 3)], VISITORS.name: visitors})
    commit(store, {HITS.name: [Hits("d1", 2), Hits("d2", 1)],
                   VISITORS.name: [Visitor(day="d2", who="a")]})  # fmt: skip
    assert store.select(HITS, order_by="day") == [Hits("d1", 5, 2), Hits("d2", 1, 1)]
    assert store.select(VISITORS, "day = ?", ("d1",), "who") == [
        Visitor(day="d1", who="a"), Visitor(day="d1", who="b")
    ]  # fmt: skip


def test_a_table_declared_by_its_columns_reads_as_tuples(store: Store) -> None:
    plain = Table("plain", (("k", "TEXT"), ("n", "INTEGER"), ("day", "DATE"), ("at", "TIMESTAMP"),
                            ("hot", "BOOLEAN")), key=("k",))  # fmt: skip
    store.create_tables([plain])
    store.upsert({"plain": [("a", 1, date(2026, 3, 1), T0, True), ("b", 2, None, None, None)]})
    assert store.select(plain, order_by="k") == [
        ("a", 1, date(2026, 3, 1), T0, True), ("b", 2, None, None, None)
    ]  # fmt: skip


class Rate(msgspec.Struct):
    video_id: str
    per_minute: float


RATES = Table.of(Rate, key="video_id")


class Play(msgspec.Struct):
    video_id: str
    ts: int


class Earned(msgspec.Struct):
    video_id: str
    plays: int
    amount: float


EARNED = Table.of(Earned, key="video_id", mode="add")


def test_a_processor_writes_structs_and_a_lookup_reads_them(backend_settings: Settings) -> None:
    rates = Lookup(RATES, lambda rows: {rate.video_id: rate.per_minute for rate in rows})

    def earn(state: State[None], batch: Batch) -> Rows:
        per_play = rates.data
        earned = [Earned(play.video_id, 1, per_play.get(play.video_id, 0.0))
                  for play in batch.events]  # fmt: skip
        return {EARNED.name: earned}

    plays = Stream("plays", Play, key="video_id", time="ts")
    processor = FunctionProcessor(earn, None)
    app = App("earnings", [plays], [EARNED], {plays.name: processor}, lookups=[rates])
    with closing(open_store(backend_settings)) as store:
        store.create_tables(app.all_tables)
        store.upsert({RATES.name: [Rate("v1", 0.5), Rate("v2", 2.0)]})
        rates.refresh(store)
    assert rates.data == {"v1": 0.5, "v2": 2.0}
    events = [Play(f"v{i % 3}", 1_767_225_600_000 + i) for i in range(30)]
    with closing(run_events(app, events, backend_settings, restarts=2)) as store:
        assert store.select(EARNED, order_by="video_id") == [
            Earned("v0", 10, 0.0), Earned("v1", 10, 5.0), Earned("v2", 10, 20.0)
        ]  # fmt: skip


class Visit(msgspec.Struct):
    page: str
    ts: int
    at: datetime


class LastVisit(msgspec.Struct):
    page: str
    at: datetime


LAST_VISITS = Table.of(LastVisit, key="page")


def test_a_record_whose_row_the_store_refuses_goes_to_the_dead_letters(settings: Settings) -> None:
    def last(state: State[None], batch: Batch) -> Rows:
        return {LAST_VISITS.name: [LastVisit(v.page, v.at) for v in batch.events]}

    visits = Stream("visits", Visit, key="page", time="ts")
    app = App("visits", [visits], [LAST_VISITS],
              {visits.name: FunctionProcessor(last, None)})  # fmt: skip
    events = [Visit(f"/{i}", 1_767_225_600_000 + i, T0 + timedelta(seconds=i)) for i in range(20)]
    events[7] = Visit("/7", events[7].ts, datetime(2026, 3, 1, 12, 30))
    with closing(run_events(app, events, settings.replace(partitions=1))) as store:
        ((partition, offset, reason, _),) = store.dead_letters(app.group(visits))
        assert (partition, offset) == (0, 7)
        assert reason.startswith("store: StoreError: table last_visit: column at: 2026-03-01 "
                                 "12:30:00 has no time zone")  # fmt: skip
        found = store.select(LAST_VISITS, order_by="at")
        assert [visit.page for visit in found] == [f"/{i}" for i in range(20) if i != 7]
        assert found[0].at == T0
