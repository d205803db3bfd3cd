"""The SQLite store (WAL mode): the embedded default. Worker processes share one
database file; ``BEGIN IMMEDIATE`` serializes their commits."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kappaflow.errors import StaleOwnership, StoreError, StoreUnavailable
from kappaflow.store.base import Claim, DeadLetter, PartitionCommit, Table

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kf_partitions (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    state BLOB,
    PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_versions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_dead_letters (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (grp, partition, "offset")
) WITHOUT ROWID;
"""


def upsert_sql(table: Table) -> str:
    """INSERT ... ON CONFLICT for a table's mode (SQL shared by SQLite and PostgreSQL)."""
    names = table.column_names
    columns = ", ".join(names)
    marks = ", ".join("?" for _ in names)
    values = [n for n in names if n not in table.key]
    if not values or table.mode == "distinct":
        return f"INSERT INTO {table.name} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    if table.mode == "add":
        sets = ", ".join(f"{n} = {table.name}.{n} + excluded.{n}" for n in values)
    else:
        sets = ", ".join(f"{n} = excluded.{n}" for n in values)
    key = ", ".join(table.key)
    return (
        f"INSERT INTO {table.name} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}"
    )


def count_sql(target: Table, column: str) -> str:
    """Add to ``column`` of ``target``'s row with the given key (created at 0)."""
    names = [*target.key, column]
    marks = ", ".join("?" for _ in names)
    return (
        f"INSERT INTO {target.name} ({', '.join(names)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(target.key)}) DO UPDATE SET "
        f"{column} = {target.name}.{column} + excluded.{column}"
    )


def create_sql(table: Table) -> str:
    """Numeric columns of ``add`` tables default to 0, so counters can start anywhere."""
    columns = ", ".join(
        f"{name} {kind}"
        + (" NOT NULL DEFAULT 0" if table.mode == "add" and name not in table.key else "")
        for name, kind in table.columns
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} "
        f"({columns}, PRIMARY KEY ({', '.join(table.key)})) WITHOUT ROWID"
    )


class _Writer:
    """Writes result rows with one cursor, honouring each table's mode."""

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}
        self.upserts: dict[str, str] = {}

    def add(self, table: Table) -> None:
        self.tables[table.name] = table
        self.upserts[table.name] = upsert_sql(table)

    def write(self, cursor: sqlite3.Cursor, rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> None:
        for name, table_rows in rows.items():
            if not table_rows:
                continue
            table = self.tables.get(name)
            if table is None:
                raise StoreError(f"no table {name!r}: create it first")
            try:
                if table.counts is None:
                    cursor.executemany(self.upserts[name], table_rows)
                else:
                    self._write_distinct(cursor, table, table_rows)
            except sqlite3.OperationalError:
                raise
            except sqlite3.Error as error:
                raise StoreError(f"writing table {name}: {error}") from error

    def _write_distinct(
        self, cursor: sqlite3.Cursor, table: Table, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        assert table.counts is not None
        target_name, column = table.counts
        target = self.tables[target_name]
        positions = [table.column_names.index(name) for name in target.key]
        added: dict[tuple[Any, ...], int] = {}
        for row in rows:
            cursor.execute(self.upserts[table.name], row)
            if cursor.rowcount == 1:
                key = tuple(row[i] for i in positions)
                added[key] = added.get(key, 0) + 1
        cursor.executemany(count_sql(target, column), [(*k, n) for k, n in added.items()])


class SQLiteStore:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL keeps the database consistent across crashes; a power loss
            # may roll back the last commits, which then rerun from the log.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from error
        self._writer = _Writer()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cursor = self._db.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from error
        except sqlite3.Error as error:
            raise StoreError(f"SQLite store {self.path}: {error}") from error

    def _read(self, action: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return action(self._db)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from error

    def create_tables(self, tables: Sequence[Table]) -> None:
        with self._transaction() as cursor:
            for table in tables:
                cursor.execute(create_sql(table))
                self._writer.add(table)

    def claim(self, group: str, partitions: Sequence[int]) -> dict[int, Claim]:
        claims = {}
        with self._transaction() as cursor:
            for partition in partitions:
                cursor.execute(
                    "INSERT INTO kf_partitions VALUES (?, ?, 1, 0, NULL) "
                    "ON CONFLICT (grp, partition) DO UPDATE SET generation = generation + 1 "
                    "RETURNING generation, next_offset, state",
                    (group, partition),
                )
                claims[partition] = Claim(*cursor.fetchone())
        return claims

    def commit(
        self,
        group: str,
        partitions: Sequence[PartitionCommit],
        rows: Mapping[str, Sequence[tuple[Any, ...]]],
        dead_letters: Sequence[DeadLetter] = (),
    ) -> None:
        with self._transaction() as cursor:
            for commit in partitions:
                found = cursor.execute(
                    "SELECT generation FROM kf_partitions WHERE grp = ? AND partition = ?",
                    (group, commit.partition),
                ).fetchone()
                if found is None or found[0] != commit.generation:
                    raise StaleOwnership(
                        f"{group} partition {commit.partition}: generation {commit.generation} "
                        f"is stale (current {found[0] if found else None}); another worker owns it"
                    )
                cursor.execute(
                    "UPDATE kf_partitions SET next_offset = ?, state = ? "
                    "WHERE grp = ? AND partition = ?",
                    (commit.next_offset, commit.state, group, commit.partition),
                )
            self._writer.write(cursor, rows)
            if dead_letters:
                cursor.executemany(
                    "INSERT OR REPLACE INTO kf_dead_letters VALUES (?, ?, ?, ?, ?)",
                    [(group, *letter) for letter in dead_letters],
                )

    def upsert(self, rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> None:
        with self._transaction() as cursor:
            self._writer.write(cursor, rows)
            cursor.executemany(
                "INSERT INTO kf_versions VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET version = version + 1",
                [(name,) for name in rows],
            )

    def version(self, table: str) -> int:
        found = self.query("SELECT version FROM kf_versions WHERE name = ?", (table,))
        return found[0][0] if found else 0

    def committed_offsets(self, group: str) -> dict[int, int]:
        found = self._read(
            lambda db: db.execute(
                "SELECT partition, next_offset FROM kf_partitions WHERE grp = ?", (group,)
            ).fetchall()
        )
        return dict(found)

    def dead_letters(self, group: str) -> list[tuple[int, int, str, bytes]]:
        return self.query(
            'SELECT partition, "offset", reason, payload FROM kf_dead_letters '
            'WHERE grp = ? ORDER BY partition, "offset"',
            (group,),
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._read(lambda db: db.execute(sql, params).fetchall())

    def close(self) -> None:
        self._db.close()
