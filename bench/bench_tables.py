"""Typed result tables through the store: rows committed as structs (`Table.of`) against
the same rows as tuples, in commits of 5,000 rows of 100,000 keys into a ``replace``
table, on SQLite and on PostgreSQL (a throwaway server of the run's own, committing
durably); and the table read back with `Store.select` as structs against
`Store.query` as tuples. Figures are rows per second of the benchmark process's CPU,
which the two ways differ in (PostgreSQL's server gets the same statements from both),
and which other processes on the machine do not move as they move the wall clock: the
best of `ROUNDS`, the two ways taken in turn, each write into a fresh store."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
from common import Figure
from rich.console import Console

from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.store.base import PartitionCommit, Table
from kappaflow.testing.postgres import postgres_database, postgres_server

ROWS = 500_000
KEYS = 100_000
PER_COMMIT = 5_000
ROUNDS = 5
READS = 3
console = Console()


class PageViews(msgspec.Struct):
    url: str
    window_ms: int
    views: int
    mean_s: float


TYPED = Table.of(PageViews, key=("url", "window_ms"))
PLAIN = Table(TYPED.name, TYPED.columns, TYPED.key)
"""The same table declared by its columns: rows are tuples."""


def run(scale: float) -> list[Figure]:
    count = round(ROWS * scale)
    rng = random.Random(5)
    structs = [
        PageViews(f"/page/{rng.randrange(KEYS // 10)}", 60_000 * rng.randrange(10),
                  rng.randrange(1, 1000), rng.random() * 60)
        for _ in range(count)
    ]  # fmt: skip
    tuples = [msgspec.structs.astuple(row) for row in structs]
    figures = []
    with postgres_server(durable=True) as server:
        for kind, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
            writes: dict[str, list[float]] = {"structs": [], "tuples": []}
            reads: dict[str, list[float]] = {"structs": [], "tuples": []}
            for round_ in range(ROUNDS):
                for way, table, rows in (("structs", TYPED, structs), ("tuples", PLAIN, tuples)):
                    with _fresh(kind, server.dsn, table) as store:
                        writes[way].append(_commit(store, rows))
                        stored, seconds = _read(store, table, way)
                        reads[way].append(seconds)
                as_structs, as_tuples = (count / writes[way][-1] for way in writes)
                console.print(f"{label}, round {round_ + 1}: {as_structs:,.0f} rows/CPU s "
                              f"committed as structs, {as_tuples:,.0f} as tuples")  # fmt: skip
            figures += [
                Figure(f"typed rows: commits to {label}", count / min(writes["structs"]),
                       "rows/CPU s", "the same rows as tuples", count / min(writes["tuples"])),
                Figure(f"typed rows: read from {label} (select)", stored / min(reads["structs"]),
                       "rows/CPU s", "query, as tuples", stored / min(reads["tuples"])),
            ]  # fmt: skip
    return figures


@contextmanager
def _fresh(kind: str, server_dsn: str, table: Table) -> Iterator[Store]:
    """A store of ``kind`` with nothing but ``table``, empty: a new SQLite file, or a
    new PostgreSQL database on the server."""
    with (
        tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp,
        postgres_database(server_dsn) as dsn,
    ):
        store = open_store(Settings.load({}, {"data_dir": tmp, "store": kind, "postgres_dsn": dsn}))
        try:
            store.create_tables([table])
            yield store
        finally:
            store.close()


def _commit(store: Store, rows: Sequence[Any]) -> float:
    """Seconds of CPU to commit ``rows`` in commits of `PER_COMMIT`, with a partition's offset."""
    store.claim("bench", [0], "bench")
    started = time.process_time()
    for at in range(0, len(rows), PER_COMMIT):
        commit = PartitionCommit(0, 1, at + PER_COMMIT, b"")
        store.commit("bench", [commit], {TYPED.name: rows[at : at + PER_COMMIT]})
    return time.process_time() - started


def _read(store: Store, table: Table, way: str) -> tuple[int, float]:
    """How many rows the table holds, and the least seconds of CPU to read them all of
    `READS`: as structs (`Store.select`), or as tuples (`Store.query`)."""
    read: Callable[[], list[Any]] = (
        (lambda: store.select(table))
        if way == "structs"
        else (lambda: store.query(f"SELECT {', '.join(table.column_names)} FROM {table.name}"))
    )
    times = []
    for _ in range(READS):
        started = time.process_time()
        found = read()
        times.append(time.process_time() - started)
    return len(found), min(times)
