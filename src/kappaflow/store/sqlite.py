"""The SQLite store (WAL mode): the embedded default. Worker processes share one
database file; ``BEGIN IMMEDIATE`` serializes their commits, and the store's writers
take turns through a lock file beside it first; the WAL is checkpointed beside them
(module `sqlite_wal`)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kappaflow.errors import StaleOwnership, StoreError, StoreUnavailable
from kappaflow.store.base import (
    AppStatus,
    AppVersion,
    Claim,
    DeadLetter,
    Halted,
    PartitionCommit,
    Row,
    ScaleDecision,
    ScalingState,
    StoredKey,
    Table,
)
from kappaflow.store.keyed import SEEN, STATE, carry_over_keyed_rows
from kappaflow.store.sql import (
    ADD_KEY_SQL,
    DEAD_LETTER_SQL,
    DELETE_DEAD_LETTER_SQL,
    PAUSE_SQL,
    REVOKE_KEY_SQL,
    RowWriter,
    StoreReads,
    check_table,
    claim_partition,
    create_sql,
    dead_letter_rows,
    deploy_version,
    key_row,
    note_halt,
    pause_row,
    promote_version,
    retire_version,
    scaling_writes,
)
from kappaflow.store.sqlite_wal import Checkpointer, open_turns, writer_turn
from kappaflow.store.tables import with_histories

T = TypeVar("T")
WAL_LIMIT_BYTES = 256 * 1024 * 1024
"""Size the WAL is cut back to once a checkpoint reaches its end, and over which a
checkpoint takes a writer's turn so that it does. At 100,000 heartbeats/s two workers write
about 120 MB/s of WAL: at 64 MiB most checkpoints ran inside a turn, holding the other
worker up; at 256 MiB the turns are held 17% less time in all
(docs/decisions/021-wal-limit-256-mib.md)."""
CHECKPOINT_S = 2.0
"""How often the WAL is checkpointed beside a connection that writes, at most."""
CACHE_BYTES = 64 * 1024 * 1024
KF_KEYS_EXISTS = "SELECT 1 FROM sqlite_schema WHERE name = 'kf_keys'"

SCHEMA = """
CREATE TABLE IF NOT EXISTS kf_partitions (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    state BLOB,
    PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_state_log (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (grp, partition, seq)
);
CREATE TABLE IF NOT EXISTS kf_seen_log (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (grp, partition, seq)
);
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
    kind TEXT NOT NULL,
    dead_lettered_at REAL NOT NULL,
    PRIMARY KEY (grp, partition, "offset")
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_apps (
    app TEXT NOT NULL,
    version INTEGER NOT NULL,
    module TEXT NOT NULL,
    status TEXT NOT NULL,
    deployed_at REAL NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (app, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    streams TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_scaling (
    pool TEXT PRIMARY KEY,
    current INTEGER NOT NULL,
    desired INTEGER NOT NULL,
    lag INTEGER NOT NULL,
    policy_lag INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    active INTEGER NOT NULL,
    at REAL NOT NULL,
    paused INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kf_scale_decisions (
    pool TEXT NOT NULL,
    at REAL NOT NULL,
    previous INTEGER NOT NULL,
    replicas INTEGER NOT NULL,
    lag INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kf_claims (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    owner TEXT NOT NULL,
    at_offset INTEGER,
    error TEXT,
    since REAL,
    retry_at REAL,
    PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
"""

INDEXES = """
CREATE INDEX IF NOT EXISTS kf_dead_letters_at
    ON kf_dead_letters (grp, dead_lettered_at, partition, "offset");
CREATE INDEX IF NOT EXISTS kf_dead_letters_kinds
    ON kf_dead_letters (grp, kind, dead_lettered_at, partition, "offset");
"""
"""Created after `UPGRADES`, which may add the columns they index."""


def _add_dead_letter_times(cursor: sqlite3.Cursor) -> None:
    """Dead letters written before their time and kind were kept get the kind of their
    reason, and the upgrade's time: they were dead-lettered then at the latest."""
    cursor.execute("ALTER TABLE kf_dead_letters ADD COLUMN kind TEXT NOT NULL DEFAULT ''")
    cursor.execute(
        "ALTER TABLE kf_dead_letters ADD COLUMN dead_lettered_at REAL NOT NULL DEFAULT 0"
    )
    cursor.execute(
        "UPDATE kf_dead_letters SET dead_lettered_at = ?, kind = CASE WHEN instr(reason, ':') "
        "THEN substr(reason, 1, instr(reason, ':') - 1) ELSE reason END",
        (time.time(),),
    )


UPGRADES: tuple[tuple[str, Callable[[sqlite3.Cursor], None]], ...] = (
    (KF_KEYS_EXISTS, carry_over_keyed_rows),
    (
        "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pragma_table_info('kf_dead_letters') "
        "WHERE name = 'dead_lettered_at')",
        _add_dead_letter_times,
    ),
)
"""What brings a store written by an earlier kappaflow up to date: each step runs when
its query finds a row."""

COLUMNS_SQL = "SELECT name, nullif(pk, 0) FROM pragma_table_info(?) ORDER BY cid"
"""A table's columns in order, each with its place in the primary key (None if not in it)."""


def _enable_wal(db: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch the database to WAL mode. Processes opening a new database at once race
    for the switch, and SQLite answers the losers "database is locked" without waiting
    (its busy timeout does not cover this lock), so they try again until the timeout."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteStore(StoreReads):
    dialect = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        """Held while a thread uses the connection: the HTTP services call the store from
        threads of their own, and one connection runs one transaction at a time."""
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False
            )
            _enable_wal(self._db, busy_timeout_s)
            # With WAL, NORMAL keeps the database consistent across crashes; a power loss
            # may roll back the last commits, which then rerun from the log.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # The WAL grows while readers keep a checkpoint from reaching its end; once one
            # does, it is cut back to this size instead of keeping its peak on disk.
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            # Checkpoints run beside the writer (`Checkpointer`), not inside COMMIT.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            # Pages kept in memory (the default keeps 2 MiB): a worker's commits touch
            # pages all over its state and result tables, and re-reading each from the
            # operating system costs more than the upserts themselves.
            self._db.execute(f"PRAGMA cache_size={-CACHE_BYTES // 1024}")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from error
        self._writer = RowWriter(sqlite3.Error, sqlite3.OperationalError)
        self._turns = open_turns(self.path)
        self._checkpoints = Checkpointer(self.path, CHECKPOINT_S, WAL_LIMIT_BYTES)
        self._upgrade()
        self._read(lambda db: db.executescript(INDEXES))

    def _upgrade(self) -> None:
        """Run the `UPGRADES` this store needs. Only a store that needs one takes the
        write lock (and looks again under it, as another process may have run it
        meanwhile)."""
        for needed, step in UPGRADES:
            if not self.query(needed):
                continue
            with self._transaction() as cursor:
                if cursor.execute(needed).fetchone():
                    step(cursor)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._db.cursor()
            try:
                with writer_turn(self._turns):
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
        self._checkpoints.wrote()

    def _read(self, action: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._lock:
                return action(self._db)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from error

    def create_tables(self, tables: Sequence[Table]) -> None:
        with self._transaction() as cursor:
            for table in with_histories(tables):
                cursor.execute(create_sql(table))
                found = cursor.execute(COLUMNS_SQL, (table.name,)).fetchall()
                check_table(table, found, f"SQLite store {self.path}")
                self._writer.add(table)

    def claim(self, group: str, partitions: Sequence[int], owner: str) -> dict[int, Claim]:
        claims = {}
        with self._transaction() as cursor:
            for partition in partitions:
                generation, offset, state = claim_partition(cursor, group, partition, owner)
                claims[partition] = Claim(
                    generation,
                    offset,
                    state,
                    STATE.read(cursor, group, partition),
                    SEEN.read(cursor, group, partition),
                )
        return claims

    def commit(
        self,
        group: str,
        partitions: Sequence[PartitionCommit],
        rows: Mapping[str, Sequence[Row]],
        dead_letters: Sequence[DeadLetter] = (),
    ) -> None:
        # The state and seen logs' reads, encoding and merges before this writer's turn.
        appends = self._read(
            lambda db: [
                (STATE.prepare(db, group, c.partition, c.keys),
                 SEEN.prepare(db, group, c.partition, c.seen))
                for c in partitions
            ]
        )  # fmt: skip
        with self._transaction() as cursor:
            for commit, (keys, seen) in zip(partitions, appends, strict=True):
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
                for log, append in ((STATE, keys), (SEEN, seen)):
                    if append is not None:
                        log.write(cursor, group, append)
            self._writer.write(cursor, rows)
            if dead_letters:
                cursor.executemany(
                    DEAD_LETTER_SQL, dead_letter_rows(group, dead_letters, time.time())
                )

    def upsert(self, rows: Mapping[str, Sequence[Row]], valid_from_ms: int | None = None) -> None:
        with self._transaction() as cursor:
            self._writer.write_reference(cursor, rows, valid_from_ms)
            cursor.executemany(
                "INSERT INTO kf_versions VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET version = version + 1",
                [(name,) for name in rows],
            )

    def version(self, table: str) -> int:
        found = self.query("SELECT version FROM kf_versions WHERE name = ?", (table,))
        return found[0][0] if found else 0

    def deploy(self, version: AppVersion, starts: Mapping[str, Mapping[int, int]]) -> AppStatus:
        with self._transaction() as cursor:
            return deploy_version(cursor, version, starts)

    def promote(self, app: str, version: int) -> None:
        with self._transaction() as cursor:
            promote_version(cursor, app, version)

    def retire(self, app: str, version: int, tables: Sequence[str], groups: Sequence[str]) -> None:
        with self._transaction() as cursor:
            retire_version(cursor, app, version, tables, groups)

    def add_key(self, stored: StoredKey) -> None:
        with self._transaction() as cursor:
            cursor.execute(ADD_KEY_SQL, key_row(stored))

    def revoke_key(self, key_id: str, at: float) -> None:
        with self._transaction() as cursor:
            cursor.execute(REVOKE_KEY_SQL, (at, key_id))

    def record_scaling(self, state: ScalingState, decision: ScaleDecision | None) -> None:
        with self._transaction() as cursor:
            for sql, params in scaling_writes(state, decision):
                cursor.execute(sql, params)

    def pause_scaling(self, pool: str, replicas: int | None) -> None:
        with self._transaction() as cursor:
            cursor.execute(PAUSE_SQL, pause_row(pool, replicas))

    def record_halt(self, group: str, partition: int, owner: str, halted: Halted) -> None:
        with self._transaction() as cursor:
            note_halt(cursor, group, partition, owner, halted)

    def delete_dead_letters(self, group: str, partition: int, offsets: Sequence[int]) -> None:
        with self._transaction() as cursor:
            cursor.executemany(
                DELETE_DEAD_LETTER_SQL, [(group, partition, offset) for offset in offsets]
            )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._read(lambda db: db.execute(sql, params).fetchall())

    def close(self) -> None:
        self._checkpoints.close()
        with self._lock:
            self._db.close()
        os.close(self._turns)
