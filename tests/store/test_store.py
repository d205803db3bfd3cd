"""The Store protocol, run against SQLite and against the PostgreSQL server on this
machine (a database of its own per test)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kappaflow.app import Lookup
from kappaflow.errors import AppError, StaleOwnership, StoreError, StoreUnavailable
from kappaflow.settings import Settings
from kappaflow.store import Store, keyed, open_store, sqlite_wal
from kappaflow.store import sqlite as sqlite_store
from kappaflow.store.base import DeadLetter, DeadLetterFilter, Halted, PartitionCommit, Table
from kappaflow.store.postgres import PostgresStore, placeholders
from kappaflow.store.sql import create_sql
from kappaflow.testing import drop_postgres_connections, wait_until
from kappaflow.testing.proxy import tcp_proxy
from kappaflow.up import free_port

TOTALS = Table("totals", (("k", "TEXT"), ("n", "INTEGER")), key=("k",), mode="add")
LATEST = Table("latest", (("k", "TEXT"), ("v", "TEXT")), key=("k",))


@pytest.fixture
def connect(backend_settings) -> Callable[[], Store]:
    """Connections to one fresh store (SQLite file or PostgreSQL database), with tables."""
    opened = []

    def connect() -> Store:
        store = open_store(backend_settings)
        store.create_tables([TOTALS, LATEST])
        opened.append(store)
        return store

    yield connect
    for store in opened:
        store.close()


@pytest.fixture
def store(connect) -> Store:
    return connect()


def test_first_claim_starts_at_zero_and_each_claim_bumps_the_generation(store: Store):
    first = store.claim("g", [0, 1], "w")
    assert first[0].generation == 1 and first[0].next_offset == 0 and first[0].state is None
    store.commit("g", [PartitionCommit(0, 1, 42, b"state")], {})
    second = store.claim("g", [0], "w")
    assert second[0] == (2, 42, b"state", {}, {})
    assert store.committed_offsets("g") == {0: 42, 1: 0}


def test_commit_writes_rows_state_offsets_and_dead_letters_together(store: Store):
    store.claim("g", [0], "w")
    rows = {"totals": [("a", 1), ("a", 2), ("b", 5)], "latest": [("a", "x"), ("a", "y")]}
    letters = [DeadLetter(0, 3, "late", b"{}")]
    store.commit("g", [PartitionCommit(0, 1, 10, b"s1")], rows, letters)
    store.commit("g", [PartitionCommit(0, 1, 20, b"s2")], {"totals": [("a", 10)]})
    assert store.query("SELECT k, n FROM totals ORDER BY k") == [("a", 13), ("b", 5)]
    assert store.query("SELECT k, v FROM latest") == [("a", "y")]
    assert store.dead_letters("g") == [(0, 3, "late", b"{}")]
    assert (store.dead_letter_counts("g"), store.dead_letter_counts("other")) == ({"late": 1}, {})
    assert store.committed_offsets("g") == {0: 20}


def test_dead_letters_are_found_by_group_kind_time_partition_and_offsets(store: Store):
    store.claim("g", [0, 1], "w")
    store.claim("h", [0], "w")
    store.commit("g", [PartitionCommit(0, 1, 5, b"")], {}, [
        DeadLetter(0, 1, "late: event time 1 is below the watermark 9", b'{"a":1}'),
        DeadLetter(0, 3, "undecodable: expected an object", b"\xff\xfe"),
    ])  # fmt: skip
    store.commit("h", [PartitionCommit(0, 1, 2, b"")], {}, [DeadLetter(0, 0, "duplicate", b"h")])
    store.commit("g", [PartitionCommit(0, 1, 9, b""), PartitionCommit(1, 1, 4, b"")], {}, [
        DeadLetter(0, 7, "late: event time 2 is below the watermark 9", b"{}"),
        DeadLetter(1, 2, "lateness: not a kind of late", b"{}"),
    ])  # fmt: skip

    def found(limit: int = 100, newest_first: bool = True, **which) -> list[tuple[str, int, int]]:
        which.setdefault("groups", ["g"])
        letters = store.find_dead_letters(DeadLetterFilter(**which), limit, newest_first)
        return [(letter.group, letter.partition, letter.offset) for letter in letters]

    # The newest first: the last commit's, then the one before (the last offsets first).
    assert found() == [("g", 1, 2), ("g", 0, 7), ("g", 0, 3), ("g", 0, 1)]
    assert found(groups=["g", "h"], limit=5) == [
        ("g", 1, 2), ("g", 0, 7), ("h", 0, 0), ("g", 0, 3), ("g", 0, 1)
    ]  # fmt: skip
    assert found(groups=["g", "h"], newest_first=False) == [
        ("g", 0, 1), ("g", 0, 3), ("g", 0, 7), ("g", 1, 2), ("h", 0, 0)
    ]  # fmt: skip
    assert found(limit=1) == [("g", 1, 2)] and found(groups=[]) == []
    assert found(kind="late") == [("g", 0, 7), ("g", 0, 1)]
    assert found(kind="lat") == [] and found(kind="duplicate") == []
    assert found(partition=0, offsets=[(2, 2), (4, 6)]) == [] == found(partition=2)
    assert found(partition=0, offsets=[(2, 4), (7, 9)]) == [("g", 0, 7), ("g", 0, 3)]
    stored = store.find_dead_letters(DeadLetterFilter(["g"]), 100)
    assert [(letter.reason, letter.payload) for letter in stored[2:]] == [
        ("undecodable: expected an object", b"\xff\xfe"),
        ("late: event time 1 is below the watermark 9", b'{"a":1}'),
    ]
    first, last = stored[-1].at, stored[0].at
    assert 0 < time.time() - first < 60 and first < last == stored[1].at
    assert found(since=last) == [("g", 1, 2), ("g", 0, 7)]
    assert store.dead_letter_counts("g") == {"late": 2, "lateness": 1, "undecodable": 1}
    store.delete_dead_letters("g", 0, [1, 7, 99])
    assert found() == [("g", 1, 2), ("g", 0, 3)] and found(groups=["h"]) == [("h", 0, 0)]
    assert store.dead_letter_counts("g") == {"lateness": 1, "undecodable": 1}


def test_dead_letters_an_earlier_version_kept_get_their_kind_and_the_upgrade_time(
    backend_settings: Settings, connect
) -> None:
    """Dead letters were kept without their reason's kind or a time."""
    connect().claim("g", [0], "w")
    rows = [("g", 0, 4, "late: event time 1 is below the watermark 9", b"{}"),
            ("g", 0, 5, "refused", b"[]")]  # fmt: skip
    postgres = backend_settings.store == "postgres"
    _execute(
        backend_settings,
        [
            ("DROP TABLE kf_dead_letters", ()),
            ('CREATE TABLE kf_dead_letters (grp TEXT NOT NULL, partition INTEGER NOT NULL, '
             '"offset" BIGINT NOT NULL, reason TEXT NOT NULL, payload BYTEA NOT NULL, '
             'PRIMARY KEY (grp, partition, "offset"))', ()),
            *[("INSERT INTO kf_dead_letters VALUES (?, ?, ?, ?, ?)", row) for row in rows],
            *[("DELETE FROM kf_schema WHERE version >= 7", ())] * postgres,
        ],
    )  # fmt: skip
    before = time.time()
    store = connect()
    upgraded = store.find_dead_letters(DeadLetterFilter(["g"]), 10, newest_first=False)
    assert [letter[:5] for letter in upgraded] == [(*row[:4], bytes(row[4])) for row in rows]
    assert all(before <= letter.at <= time.time() for letter in upgraded)
    assert store.dead_letter_counts("g") == {"late": 1, "refused": 1}
    store.commit("g", [PartitionCommit(0, 1, 9, b"")], {}, [DeadLetter(0, 8, "late: x", b"")])
    newest = store.find_dead_letters(DeadLetterFilter(["g"], kind="late"), 1)
    assert [letter.offset for letter in newest] == [8]
    assert connect().dead_letter_counts("g") == {"late": 2, "refused": 1}  # upgraded once


def test_threads_may_share_one_store(store: Store) -> None:
    """The HTTP services call the store from threads: each transaction is whole."""
    store.claim("g", [0, 1], "w")
    failures: list[BaseException] = []

    def run(action: Callable[[int], object]) -> None:
        try:
            for i in range(150):
                action(i)
        except BaseException as failure:
            failures.append(failure)

    def write(partition: int) -> Callable[[int], object]:
        return lambda i: store.commit("g", [PartitionCommit(partition, 1, i + 1, b"")], {},
                                      [DeadLetter(partition, i, "late: x", b"{}")])  # fmt: skip

    def read(i: int) -> object:
        return store.find_dead_letters(DeadLetterFilter(["g"]), 5), store.dead_letter_counts("g")

    threads = [threading.Thread(target=run, args=(action,))
               for action in (write(0), write(1), read, read, read)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert store.dead_letter_counts("g") == {"late": 300}
    assert store.committed_offsets("g") == {0: 150, 1: 150}


def test_a_halt_is_noted_by_the_owner_and_cleared_by_the_next_claim(store: Store):
    store.claim("g", [0, 1, 2], "w")
    for partition in (0, 1, 2):
        store.record_halt("g", partition, "w", Halted(5, "ValueError: first", 100.0, 130.0))
    store.record_halt("g", 0, "w", Halted(5, "ValueError: again", 130.0, 190.0))  # replaces
    assert store.halts("g") == {
        0: Halted(5, "ValueError: again", 130.0, 190.0),
        1: Halted(5, "ValueError: first", 100.0, 130.0),
        2: Halted(5, "ValueError: first", 100.0, 130.0),
    }
    store.claim("g", [1], "v")  # another worker takes it over
    store.record_halt("g", 1, "w", Halted(6, "ValueError: late", 140.0, 200.0))  # not w's now
    store.claim("g", [2], "w")  # tried again
    assert list(store.halts("g")) == [0] and store.halts("other") == {}
    assert store.owners("g") == {0: "w", 1: "v", 2: "w"}


def test_stale_generation_cannot_commit_and_writes_nothing(store: Store, connect):
    old = store.claim("g", [0, 1], "w")
    other = connect()
    new = other.claim("g", [1], "v")
    with pytest.raises(StaleOwnership, match="partition 1"):
        store.commit(
            "g",
            [
                PartitionCommit(0, old[0].generation, 5, b"x", {"k": b"v"}, {"id": 1}),
                PartitionCommit(1, 1, 5, b"x", {"k": b"v"}),
            ],
            {"totals": [("a", 1)]},
            [DeadLetter(0, 1, "late", b"")],
        )
    assert store.query("SELECT count(*) FROM totals") == [(0,)]
    assert store.dead_letters("g") == []
    assert store.committed_offsets("g") == {0: 0, 1: 0}
    assert store.claim("g", [0], "w")[0][3:] == ({}, {})
    other.commit("g", [PartitionCommit(1, new[1].generation, 7, b"y")], {"totals": [("a", 1)]})
    assert store.committed_offsets("g") == {0: 0, 1: 7}


def test_keyed_state_changes_are_kept_and_claimed_per_partition(store: Store) -> None:
    store.claim("g", [0, 1], "w")
    store.commit("g", [PartitionCommit(0, 1, 3, b"", {"a": b"1", "b": b"2"}),
                       PartitionCommit(1, 1, 4, b"", {"a": b"other"})], {})  # fmt: skip
    store.commit("g", [PartitionCommit(0, 1, 5, b"", {"a": b"3", "b": None, "c": None})], {})
    claims = store.claim("g", [0, 1], "w")
    assert claims[0].keys == {"a": b"3"} and claims[0].next_offset == 5
    assert claims[1].keys == {"a": b"other"}
    assert store.claim("h", [0], "w")[0].keys == {}


def test_the_event_ids_counted_are_kept_and_claimed_per_partition(store: Store) -> None:
    store.claim("g", [0, 1], "w")
    store.commit("g", [PartitionCommit(0, 1, 3, b"", seen={"a": 1, "b": 2}),
                       PartitionCommit(1, 1, 4, b"", {"a": b"state"}, {"a": 7})], {})  # fmt: skip
    store.commit("g", [PartitionCommit(0, 1, 5, b"", seen={"a": None, "c": 3})], {})
    claims = store.claim("g", [0, 1], "w")
    assert claims[0].seen == {"b": 2, "c": 3} and claims[0].keys == {}
    assert claims[1].seen == {"a": 7} and claims[1].keys == {"a": b"state"}
    assert store.claim("h", [0], "w")[0].seen == {}


def _log_rows(store: Store, partition: int) -> int:
    sql = "SELECT count(*) FROM kf_state_log WHERE grp = 'g' AND partition = ?"
    return store.query(sql, (partition,))[0][0]


def test_keyed_state_log_is_merged_when_long_and_claims_see_every_change(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyed, "MERGE_MAX_ROWS", 4)
    store.claim("g", [0], "w")
    rng, expected, lengths = random.Random(7), {}, []
    for offset in range(1, 40):
        change = {f"k{rng.randrange(12)}": rng.choice([None, rng.randbytes(8)]) for _ in range(5)}
        store.commit("g", [PartitionCommit(0, 1, offset, b"", change)], {})
        expected.update(change)
        lengths.append(_log_rows(store, 0))
    assert max(lengths) == 4 and lengths.count(1) >= 9  # merged every 4th commit
    kept = {key: state for key, state in expected.items() if state is not None}
    assert store.claim("g", [0], "w")[0].keys == kept


def test_keyed_state_log_is_merged_when_its_changes_outweigh_the_last_merge(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyed, "MERGE_MIN_BYTES", 0)
    store.claim("g", [0], "w")
    base = {f"k{i}": b"x" * 50 for i in range(10)}  # 551 bytes of msgpack
    store.commit("g", [PartitionCommit(0, 1, 1, b"", base)], {})
    lengths = []
    # Changes of 56 bytes each: the 40th outweighs the first row 4 times (2,240 > 2,204).
    assert keyed.MERGE_RATIO == 4
    for offset in range(2, 42):
        change = {f"k{offset % 10}": bytes([offset]) * 50}
        store.commit("g", [PartitionCommit(0, 1, offset, b"", change)], {})
        base.update(change)
        lengths.append(_log_rows(store, 0))
    assert lengths == [*range(2, 41), 1]
    assert store.claim("g", [0], "w")[0].keys == base


def _execute(settings: Settings, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """SQL on the store's database through its driver, outside kappaflow."""
    if settings.store == "sqlite":
        with closing(sqlite3.connect(settings.sqlite_path)) as db, db:
            for sql, params in statements:
                db.execute(sql, params)
    else:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as db:
            for sql, params in statements:
                db.execute(placeholders(sql), params)


def test_a_store_an_earlier_version_gave_an_owner_column_still_claims(
    backend_settings: Settings, connect
) -> None:
    """Owners were briefly a column of kf_partitions (and halts a table of their own)."""
    connect().claim("g", [0], "w")
    postgres = backend_settings.store == "postgres"
    _execute(
        backend_settings,
        [
            ("ALTER TABLE kf_partitions ADD COLUMN owner TEXT", ()),
            *[("CREATE TABLE kf_halts (grp TEXT)", ()),
              ("DELETE FROM kf_schema WHERE version >= 6", ())] * postgres,
        ],
    )  # fmt: skip
    store = connect()
    assert store.claim("g", [0, 1], "v")[0].generation == 2
    assert store.owners("g") == {0: "v", 1: "v"}
    if postgres:  # migrated: the column and the table are gone
        assert store.query(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'owner' "
            "AND table_name = 'kf_partitions'"
        ) == [(0,)]
        assert store.query("SELECT to_regclass('kf_halts') IS NULL") == [(True,)]


def test_state_kept_one_row_per_key_by_an_earlier_version_is_carried_over(
    backend_settings: Settings, connect
) -> None:
    connect().claim("g", [0, 1], "w")
    rows = [("g", 0, "a", b"A"), ("g", 1, "b", b"B"), ("g", 0, "c", b"C")]
    postgres = backend_settings.store == "postgres"
    _execute(
        backend_settings,
        [
            ("CREATE TABLE kf_keys (grp TEXT NOT NULL, partition INTEGER NOT NULL, state_key TEXT "
             "NOT NULL, state BYTEA NOT NULL, PRIMARY KEY (grp, partition, state_key))", ()),
            *[("INSERT INTO kf_keys VALUES (?, ?, ?, ?)", row) for row in rows],
            *[("DELETE FROM kf_schema WHERE version >= 3", ())] * postgres,  # migrate again
        ],
    )  # fmt: skip
    claims = connect().claim("g", [0, 1], "w")
    assert claims[0].keys == {"a": b"A", "c": b"C"} and claims[1].keys == {"b": b"B"}
    assert connect().claim("g", [0], "w")[0].keys == {"a": b"A", "c": b"C"}  # converted once


@pytest.mark.parametrize(
    "declared",
    [
        Table("latest", (("p", "INTEGER"), ("k", "TEXT"), ("v", "TEXT")), key=("p", "k")),
        Table("latest", (("k", "TEXT"), ("v", "TEXT")), key=("k", "v")),
        Table("latest", (("v", "TEXT"), ("k", "TEXT")), key=("k",)),
    ],
    ids=["a column more", "another key", "another order"],
)
def test_a_table_an_earlier_app_created_otherwise_is_named_with_both_shapes(
    store: Store, declared: Table
) -> None:
    """Tables are created if missing; one the app now declares otherwise is an error at
    start, not a failure at every commit, and the table is left as it was."""
    store.create_tables([LATEST])  # as it is: nothing to say
    store.commit("g", [], {"latest": [("a", "1")]})
    with pytest.raises(StoreError) as raised:
        store.create_tables([TOTALS, declared])
    message = str(raised.value)
    assert "table latest has columns (k, v) keyed by (k), but the app declares" in message
    columns = ", ".join(declared.column_names)
    assert f"({columns}) keyed by ({', '.join(declared.key)})" in message
    assert "compute every result again from the log" in message
    assert store.query("SELECT k, v FROM latest") == [("a", "1")]


def test_a_failing_row_rolls_back_the_whole_batch(store: Store) -> None:
    store.claim("g", [0], "w")
    with pytest.raises(StoreError, match="writing table totals"):
        store.commit("g", [PartitionCommit(0, 1, 9, b"s")], {"totals": [("a", 1), ("b",)]})
    assert store.committed_offsets("g") == {0: 0}
    assert store.query("SELECT count(*) FROM totals") == [(0,)]


def test_distinct_rows_count_into_another_table(store: Store) -> None:
    totals = Table("day_totals", (("day", "TEXT"), ("hits", "INTEGER"), ("users", "INTEGER")),
                   key=("day",), mode="add")  # fmt: skip
    seen = Table("seen", (("day", "TEXT"), ("who", "TEXT")), key=("day", "who"),
                 mode="distinct", counts=("day_totals", "users"))  # fmt: skip
    store.create_tables([totals, seen])
    store.commit(
        "g", [], {"day_totals": [("d1", 3, 0)], "seen": [("d1", "a"), ("d1", "b"), ("d1", "a")]}
    )
    store.commit("g", [], {"seen": [("d1", "b"), ("d1", "c"), ("d2", "a")]})
    assert store.query("SELECT * FROM day_totals ORDER BY day") == [("d1", 3, 3), ("d2", 0, 1)]


def test_upsert_writes_reference_rows_and_bumps_versions(store: Store) -> None:
    catalog = Table("catalog", (("id", "TEXT"), ("rate", "REAL")), key=("id",))
    store.create_tables([catalog])
    assert store.version("catalog") == 0
    store.upsert({"catalog": [("a", 1.0), ("b", 2.0)]})
    store.upsert({"catalog": [("a", 1.5)]})
    assert store.version("catalog") == 2
    assert store.query("SELECT * FROM catalog ORDER BY id") == [("a", 1.5), ("b", 2.0)]


def test_reference_rows_with_history_are_kept_valid_from_their_upload(store: Store) -> None:
    """Rows uploaded before the table had history are valid from 0; each upload since
    is kept with its time, given or now; a lookup reads what was in force at a time."""
    plain = Table("rates", (("id", "TEXT"), ("rate", "REAL")), key=("id",))
    store.create_tables([plain])
    store.upsert({"rates": [("a", 1.0), ("b", 2.0)]})
    rates = Table("rates", plain.columns, plain.key, history=True)
    store.create_tables([rates])
    store.upsert({"rates": [("a", 3.0)]}, valid_from_ms=5_000)
    before = round(time.time() * 1000)
    store.upsert({"rates": [("b", 4.0), ("c", 5.0)]})
    store.upsert({"rates": [("a", 6.0)]}, valid_from_ms=2_000)  # backdated
    history = store.query("SELECT * FROM rates_history ORDER BY valid_from_ms, id")
    assert history[:5] == [(0, "a", 1.0), (0, "b", 2.0), (2_000, "a", 6.0), (5_000, "a", 3.0),
                           (history[4][0], "b", 4.0)]  # fmt: skip
    assert history[4][0] >= before and history[5][1:] == ("c", 5.0)
    assert store.query("SELECT * FROM rates ORDER BY id") == [("a", 6.0), ("b", 4.0), ("c", 5.0)]
    lookup = Lookup(rates, dict)
    lookup.refresh(store)
    assert lookup.data == {"a": 6.0, "b": 4.0, "c": 5.0}
    assert lookup.at(-1) == lookup.at(1_999) == {"a": 1.0, "b": 2.0}
    assert lookup.at(2_000) == {"a": 6.0, "b": 2.0}
    assert lookup.at(5_000) == lookup.at(before - 1) == {"a": 3.0, "b": 2.0}
    assert lookup.at(history[4][0]) == {"a": 3.0, "b": 4.0, "c": 5.0}
    with pytest.raises(AppError, match="a table with history has mode 'replace'"):
        Table("counts", (("id", "TEXT"), ("n", "INTEGER")), ("id",), "add", history=True)


def test_rows_uploaded_before_the_table_had_history_are_in_force_at_every_time(
    store: Store,
) -> None:
    plain = Table("rates", (("id", "TEXT"), ("rate", "REAL")), key=("id",))
    store.create_tables([plain])
    store.upsert({"rates": [("a", 1.0)]})
    rates = Table("rates", plain.columns, plain.key, history=True)
    store.create_tables([rates])  # its history is empty until the next upload
    lookup = Lookup(rates, dict)
    lookup.refresh(store)
    assert lookup.at(0) == lookup.at(10**12) == lookup.data == {"a": 1.0}


def test_sqlite_wal_is_cut_back_once_a_checkpoint_reaches_its_end(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holds the checkpoints back, so the WAL grows; after it is gone, the
    WAL shrinks to the limit instead of keeping its peak size on disk: once it is over
    the limit, a checkpoint copies all of it in a writer's turn, whenever the last
    checkpoint was, and the next commit starts the WAL over."""
    monkeypatch.setattr(sqlite_store, "WAL_LIMIT_BYTES", 64 * 1024)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 3600.0)  # none for the time alone
    store = open_store(settings)
    store.create_tables([LATEST])
    wal = Path(f"{settings.sqlite_path}-wal")
    with closing(sqlite3.connect(settings.sqlite_path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM latest").fetchall()
        for batch in range(8):
            store.upsert({"latest": [(f"{batch}-{i}", "x" * 1000) for i in range(1000)]})
        peak = wal.stat().st_size
        reader.execute("COMMIT")
    deadline = time.monotonic() + 10
    while wal.stat().st_size > 64 * 1024 and time.monotonic() < deadline:
        store.upsert({"latest": [("again", "y")]})
        time.sleep(0.05)
    assert peak > 8_000_000 and wal.stat().st_size <= 64 * 1024
    store.close()


def test_sqlite_wal_over_its_limit_is_checkpointed_once_a_write(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL keeps its size on disk until the next commit starts it over: a store that
    stops writing with the WAL over the limit checkpoints it once, and does not take the
    writers' turn again for nothing while it is idle."""
    monkeypatch.setattr(sqlite_store, "WAL_LIMIT_BYTES", 64 * 1024)
    checkpoints: list[sqlite3.Connection] = []
    checkpoint = sqlite_wal._checkpoint

    def counted(db: sqlite3.Connection) -> None:
        checkpoints.append(db)
        checkpoint(db)

    monkeypatch.setattr(sqlite_wal, "_checkpoint", counted)
    store = open_store(settings)
    store.create_tables([LATEST])
    for batch in range(3):
        store.upsert({"latest": [(f"{batch}-{i}", "x" * 1000) for i in range(1000)]})
    deadline = time.monotonic() + 10
    while not checkpoints and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the cut-back's two checkpoints, the second in a writer's turn
    cut_back = len(checkpoints)
    time.sleep(1.0)  # 10 looks at the WAL, still over the limit
    assert Path(f"{settings.sqlite_path}-wal").stat().st_size > 64 * 1024
    assert cut_back >= 1 and len(checkpoints) == cut_back
    store.close()


def test_sqlite_checkpoints_beside_its_writer_once_one_is_due(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows rewritten by many commits stay in the WAL until a checkpoint is due, and are
    then copied into the database once, by the checkpoints beside a writer."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 3600.0)
    store = open_store(settings)
    store.create_tables([LATEST])
    database, wal = Path(settings.sqlite_path), Path(f"{settings.sqlite_path}-wal")
    for commit in range(12):  # 12 commits rewrite the same 500 rows: about 2.4 MB each
        store.upsert({"latest": [(f"{i}", f"{commit:x}" * 1000) for i in range(500)]})
    assert wal.stat().st_size > 5_000_000 and database.stat().st_size < 200_000
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 0.05)
    other = open_store(settings)
    other.create_tables([LATEST])  # a commit
    deadline = time.monotonic() + 10
    while database.stat().st_size < 500_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 500_000 < database.stat().st_size < 5_000_000  # the rows once, not 12 times
    other.close()
    store.close()


def test_sqlite_writers_take_turns_through_a_lock_file(settings: Settings) -> None:
    """A writer holds the lock file beside the database for its whole transaction, so
    the next one waits for it in the kernel, not in SQLite's busy loop."""
    store = open_store(settings)
    store.create_tables([LATEST])
    turns = os.open(f"{settings.sqlite_path}-writer", os.O_RDWR)
    try:
        with store._transaction(), pytest.raises(BlockingIOError):
            fcntl.flock(turns, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(turns, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(turns, fcntl.LOCK_UN)
    finally:
        os.close(turns)
        store.close()


def _open_when_all_are_ready(path: Path, ready: Any, outcomes: Any) -> None:
    ready.wait()
    try:
        sqlite_store.SQLiteStore(path).close()
        outcomes.put("opened")
    except StoreError as error:
        outcomes.put(str(error))


def test_sqlite_processes_opening_a_new_database_at_once_all_open_it(tmp_path: Path) -> None:
    """Workers started together race to switch a new database to WAL; SQLite tells the
    losers "database is locked" at once (8 processes: a third of the rounds without the
    retry), and each must wait its turn instead."""
    context = multiprocessing.get_context("fork")
    for round_ in range(30):
        ready, outcomes = context.Barrier(8), context.Queue()
        path = tmp_path / f"{round_}.db"
        openers = [context.Process(target=_open_when_all_are_ready, args=(path, ready, outcomes))
                   for _ in range(8)]  # fmt: skip
        for opener in openers:
            opener.start()
        results = [outcomes.get(timeout=30) for _ in openers]
        for opener in openers:
            opener.join()
        assert results == ["opened"] * 8
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_postgres_notes_a_halt_after_the_server_dropped_its_connection(
    postgres_dsn: str,
) -> None:
    """Noting a halt sets the same values again, so it is retried on a new connection."""
    store = PostgresStore(postgres_dsn)
    store.claim("g", [0], "worker-1")
    drop_postgres_connections(postgres_dsn)
    halted = Halted(5, "ValueError: boom", 1.0, 2.0)
    store.record_halt("g", 0, "worker-1", halted)
    assert store.halts("g") == {0: halted}
    store.close()


def test_an_unreachable_postgres_is_named_once_in_the_error() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                          connect_timeout_s=1)  # fmt: skip
    with pytest.raises(StoreUnavailable) as raised:
        store.query("SELECT 1")
    assert str(raised.value).startswith("PostgreSQL store: cannot connect: ")
    assert str(raised.value).count("PostgreSQL store") == 1


def test_a_postgres_store_opened_while_unreachable_creates_its_tables_once_it_is_back(
    postgres_dsn: str,
) -> None:
    """A process that starts during an outage (``up``'s server, say) keeps its store:
    calls answer StoreUnavailable until the server is back, and the first call then
    migrates the store and creates the tables asked for meanwhile."""
    server, database = postgres_dsn.rsplit("/", 1)
    with tcp_proxy(int(server.rsplit(":", 1)[1])) as proxy:
        proxy.cut()
        store = PostgresStore(f"{server.rsplit(':', 1)[0]}:{proxy.port}/{database}",
                              connect_timeout_s=1)  # fmt: skip
        store.create_tables([TOTALS])
        with pytest.raises(StoreUnavailable):
            store.claim("g", [0], "worker-1")
        proxy.heal()
        store.commit("g", [PartitionCommit(0, store.claim("g", [0], "w")[0].generation, 3, b"")],
                     {"totals": [("a", 2)]})  # fmt: skip
        assert store.query("SELECT k, n FROM totals") == [("a", 2)]
        assert store.committed_offsets("g") == {0: 3}
        store.close()


def test_a_postgres_store_waits_out_each_process_creating_its_tables_at_the_same_time(
    postgres_dsn: str,
) -> None:
    """Ingest, query and workers started together create the same tables at once.
    ``IF NOT EXISTS`` is no guard against a creation not yet committed: the loser waits
    for it and then fails with "already exists". It must go on with the winner's table,
    as often as there are winners (here one for each of its two tables)."""
    PostgresStore(postgres_dsn).close()  # migrated, so only the two tables are raced
    winners = [psycopg.connect(postgres_dsn) for _ in range(2)]
    for winner, table in zip(winners, [TOTALS, LATEST], strict=True):
        winner.execute(create_sql(table, "postgres"))
    outcome: list[object] = []

    def create() -> None:
        store = PostgresStore(postgres_dsn)
        try:
            store.create_tables([TOTALS, LATEST])
            outcome.append(store.query("SELECT count(*) FROM latest"))
        except StoreError as error:
            outcome.append(error)
        finally:
            store.close()

    loser = threading.Thread(target=create)
    loser.start()
    with psycopg.connect(postgres_dsn, autocommit=True) as watcher:

        def blocks_the_loser(winner: psycopg.Connection[Any]) -> bool:
            blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            return watcher.execute(blocked, (winner.info.backend_pid,)).fetchone()[0] == 1

        for winner in winners:
            wait_until(partial(blocks_the_loser, winner), 30, "the loser waiting for this winner")
            winner.commit()
            winner.close()
    loser.join(30)
    assert outcome == [[(0,)]]
