"""The Store protocol, run against SQLite and against the PostgreSQL server on this
machine (a database of its own per test)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kappaflow.errors import StaleOwnership, StoreError
from kappaflow.store import Store, open_store
from kappaflow.store.base import DeadLetter, PartitionCommit, Table

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
    first = store.claim("g", [0, 1])
    assert first[0].generation == 1 and first[0].next_offset == 0 and first[0].state is None
    store.commit("g", [PartitionCommit(0, 1, 42, b"state")], {})
    second = store.claim("g", [0])
    assert second[0] == (2, 42, b"state", {})
    assert store.committed_offsets("g") == {0: 42, 1: 0}


def test_commit_writes_rows_state_offsets_and_dead_letters_together(store: Store):
    store.claim("g", [0])
    rows = {"totals": [("a", 1), ("a", 2), ("b", 5)], "latest": [("a", "x"), ("a", "y")]}
    letters = [DeadLetter(0, 3, "late", b"{}")]
    store.commit("g", [PartitionCommit(0, 1, 10, b"s1")], rows, letters)
    store.commit("g", [PartitionCommit(0, 1, 20, b"s2")], {"totals": [("a", 10)]})
    assert store.query("SELECT k, n FROM totals ORDER BY k") == [("a", 13), ("b", 5)]
    assert store.query("SELECT k, v FROM latest") == [("a", "y")]
    assert store.dead_letters("g") == [(0, 3, "late", b"{}")]
    assert store.committed_offsets("g") == {0: 20}


def test_stale_generation_cannot_commit_and_writes_nothing(store: Store, connect):
    old = store.claim("g", [0, 1])
    other = connect()
    new = other.claim("g", [1])
    with pytest.raises(StaleOwnership, match="partition 1"):
        store.commit(
            "g",
            [
                PartitionCommit(0, old[0].generation, 5, b"x", {"k": b"v"}),
                PartitionCommit(1, 1, 5, b"x", {"k": b"v"}),
            ],
            {"totals": [("a", 1)]},
            [DeadLetter(0, 1, "late", b"")],
        )
    assert store.query("SELECT count(*) FROM totals") == [(0,)]
    assert store.dead_letters("g") == []
    assert store.committed_offsets("g") == {0: 0, 1: 0}
    assert store.claim("g", [0])[0].keys == {}
    other.commit("g", [PartitionCommit(1, new[1].generation, 7, b"y")], {"totals": [("a", 1)]})
    assert store.committed_offsets("g") == {0: 0, 1: 7}


def test_keyed_state_is_written_key_by_key_and_claimed_per_partition(store: Store) -> None:
    store.claim("g", [0, 1])
    store.commit("g", [PartitionCommit(0, 1, 3, b"", {"a": b"1", "b": b"2"}),
                       PartitionCommit(1, 1, 4, b"", {"a": b"other"})], {})  # fmt: skip
    store.commit("g", [PartitionCommit(0, 1, 5, b"", {"a": b"3", "b": None, "c": None})], {})
    claims = store.claim("g", [0, 1])
    assert claims[0].keys == {"a": b"3"} and claims[0].next_offset == 5
    assert claims[1].keys == {"a": b"other"}
    assert store.claim("h", [0])[0].keys == {}


def test_a_failing_row_rolls_back_the_whole_batch(store: Store) -> None:
    store.claim("g", [0])
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
