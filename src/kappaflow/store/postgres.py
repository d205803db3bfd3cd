"""The PostgreSQL store (also YugabyteDB's YSQL, which speaks the same protocol and
SQL): the same tables and the same one-transaction commit of rows, state and offsets
as SQLite, with the ownership generation checked by the commit's own UPDATE.

YSQL notes: the SQL here avoids what YSQL lacks or runs slowly (advisory locks, LOCK
TABLE, triggers, ``CREATE INDEX CONCURRENTLY``): schema changes are idempotent
``CREATE TABLE IF NOT EXISTS`` steps recorded in ``kf_schema``, run again when a
concurrent start made the same object first; conflicts are resolved by primary keys and
``ON CONFLICT``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from kappaflow.errors import MissingExtra, StaleOwnership, StoreError, StoreUnavailable
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
from kappaflow.store.tables import with_histories

try:
    import psycopg
    from psycopg import errors as pg_errors
except ModuleNotFoundError as missing:
    raise MissingExtra("the PostgreSQL store (KAPPAFLOW_STORE=postgres)", "postgres") from missing

T = TypeVar("T")
log = logging.getLogger("kappaflow.store")


def _create_state_log(cursor: psycopg.Cursor[Any]) -> None:
    """The state log, with the state kept one row per key (kf_keys) moved into it."""
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS kf_state_log (grp TEXT NOT NULL, partition INTEGER NOT NULL, "
        "seq BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (grp, partition, seq))"
    )
    carry_over_keyed_rows(cursor, placeholders)


MIGRATIONS: tuple[str | Callable[[psycopg.Cursor[Any]], None], ...] = (
    # 1: the store's own tables
    """
    CREATE TABLE IF NOT EXISTS kf_partitions (
        grp TEXT NOT NULL, partition INTEGER NOT NULL, generation BIGINT NOT NULL,
        next_offset BIGINT NOT NULL, state BYTEA, PRIMARY KEY (grp, partition));
    CREATE TABLE IF NOT EXISTS kf_versions (name TEXT PRIMARY KEY, version BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS kf_dead_letters (
        grp TEXT NOT NULL, partition INTEGER NOT NULL, "offset" BIGINT NOT NULL,
        reason TEXT NOT NULL, payload BYTEA NOT NULL, PRIMARY KEY (grp, partition, "offset"));
    """,
    # 2: keyed state, written key by key
    """
    CREATE TABLE IF NOT EXISTS kf_keys (
        grp TEXT NOT NULL, partition INTEGER NOT NULL, state_key TEXT NOT NULL,
        state BYTEA NOT NULL, PRIMARY KEY (grp, partition, state_key));
    """,
    # 3: keyed state as a log of changes per partition
    _create_state_log,
    # 4: partitions halted by their app's processor (replaced by 6)
    """
    CREATE TABLE IF NOT EXISTS kf_halts (
        grp TEXT NOT NULL, partition INTEGER NOT NULL, at_offset BIGINT NOT NULL,
        error TEXT NOT NULL, since DOUBLE PRECISION NOT NULL,
        retry_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (grp, partition));
    """,
    # 5: which worker claimed each partition last (replaced by 6)
    "ALTER TABLE kf_partitions ADD COLUMN IF NOT EXISTS owner TEXT",
    # 6: who claimed each partition last, and where its processor halted since
    """
    CREATE TABLE IF NOT EXISTS kf_claims (
        grp TEXT NOT NULL, partition INTEGER NOT NULL, owner TEXT NOT NULL, at_offset BIGINT,
        error TEXT, since DOUBLE PRECISION, retry_at DOUBLE PRECISION,
        PRIMARY KEY (grp, partition));
    DROP TABLE IF EXISTS kf_halts;
    ALTER TABLE kf_partitions DROP COLUMN IF EXISTS owner;
    """,
    # 7: each dead letter's reason kind, and when it was dead-lettered (rows from before:
    # the upgrade's time, when they were dead-lettered at the latest)
    """
    ALTER TABLE kf_dead_letters ADD COLUMN IF NOT EXISTS kind TEXT;
    ALTER TABLE kf_dead_letters ADD COLUMN IF NOT EXISTS dead_lettered_at DOUBLE PRECISION;
    UPDATE kf_dead_letters
        SET kind = split_part(reason, ':', 1), dead_lettered_at = extract(epoch FROM now())
        WHERE dead_lettered_at IS NULL;
    ALTER TABLE kf_dead_letters ALTER COLUMN kind SET NOT NULL,
        ALTER COLUMN dead_lettered_at SET NOT NULL;
    CREATE INDEX IF NOT EXISTS kf_dead_letters_at
        ON kf_dead_letters (grp, dead_lettered_at, partition, "offset");
    CREATE INDEX IF NOT EXISTS kf_dead_letters_kinds
        ON kf_dead_letters (grp, kind, dead_lettered_at, partition, "offset");
    """,
    # 8: the event ids counted, as a log of changes per partition
    """
    CREATE TABLE IF NOT EXISTS kf_seen_log (
        grp TEXT NOT NULL, partition INTEGER NOT NULL, seq BIGINT NOT NULL,
        data BYTEA NOT NULL, PRIMARY KEY (grp, partition, seq));
    """,
    # 9: app versions
    """
    CREATE TABLE IF NOT EXISTS kf_apps (
        app TEXT NOT NULL, version INTEGER NOT NULL, module TEXT NOT NULL,
        status TEXT NOT NULL, deployed_at DOUBLE PRECISION NOT NULL, note TEXT NOT NULL,
        PRIMARY KEY (app, version));
    """,
    # 10: API keys
    """
    CREATE TABLE IF NOT EXISTS kf_api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, streams TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION,
        salt BYTEA NOT NULL, digest BYTEA NOT NULL);
    """,
    # 11: the autoscalers' state, pauses and decisions
    """
    CREATE TABLE IF NOT EXISTS kf_scaling (
        pool TEXT PRIMARY KEY, current INTEGER NOT NULL, desired INTEGER NOT NULL,
        lag BIGINT NOT NULL, policy_lag BIGINT NOT NULL, threshold BIGINT NOT NULL,
        active INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL, paused INTEGER);
    CREATE TABLE IF NOT EXISTS kf_scale_decisions (
        pool TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, previous INTEGER NOT NULL,
        replicas INTEGER NOT NULL, lag BIGINT NOT NULL, reason TEXT NOT NULL);
    """,
)


def _migrate(cursor: psycopg.Cursor[Any]) -> None:
    """The steps of `MIGRATIONS` the store has not taken yet."""
    cursor.execute("CREATE TABLE IF NOT EXISTS kf_schema (version INTEGER NOT NULL)")
    cursor.execute("SELECT max(version) FROM kf_schema")
    current = cursor.fetchone()[0] or 0  # type: ignore[index]
    for version, step in enumerate(MIGRATIONS, start=1):
        if version > current:
            if callable(step):
                step(cursor)
            else:
                cursor.execute(step)
            cursor.execute("INSERT INTO kf_schema VALUES (%s)", (version,))


RETRIES = 5
COLUMNS_SQL = (
    "SELECT a.attname, array_position(i.indkey::int2[], a.attnum) FROM pg_attribute a "
    "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
    "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)
"""A table's columns in order, each with its place in the primary key (None if not in it)."""


def placeholders(sql: str) -> str:
    """``?`` placeholders (the SQL kappaflow and its apps write) -> psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresStore(StoreReads):
    dialect = "postgres"

    def __init__(self, dsn: str, connect_timeout_s: float = 10) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self._db: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        """Held while a thread uses the connection: the HTTP services call the store from
        threads of their own, and one connection runs one transaction at a time."""
        self._writer = RowWriter(
            psycopg.Error, psycopg.OperationalError, placeholders, self.dialect
        )
        self._pending: list[Table] = []
        """The tables asked for and not created yet (see `create_tables`)."""
        self._schema_ready = False
        """Whether the server holds the store's own tables, migrated, and ``_pending``."""
        self._prepare()

    # -- connection ------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            try:
                self._db = psycopg.connect(self.dsn, connect_timeout=int(self.connect_timeout_s))
            except psycopg.Error as error:
                raise StoreUnavailable(f"PostgreSQL store: cannot connect: {error}") from error
        return self._db

    def _drop_connection(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    def _retry(self, action: Callable[[], T]) -> T:
        """Run an idempotent action (made of `_transaction`s, which turn a lost
        connection into StoreUnavailable), reconnecting with backoff when the server is
        gone."""
        for attempt in range(RETRIES):
            try:
                return action()
            except StoreUnavailable as error:
                with self._lock:
                    self._drop_connection()
                if attempt == RETRIES - 1:
                    raise
                pause = 0.1 * 2**attempt
                log.warning("PostgreSQL unavailable (%s); retrying in %.1f s", error, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _transaction(self, body: Callable[[psycopg.Cursor[Any]], T]) -> T:
        """One transaction, once the schema is on the server; connection loss is
        StoreUnavailable (its outcome unknown)."""
        with self._lock:
            db = self._connection()
            try:
                if not self._schema_ready:
                    self._create_schema(db)
                with db.transaction(), db.cursor() as cursor:
                    return body(cursor)
            except psycopg.OperationalError as error:
                self._drop_connection()
                raise StoreUnavailable(f"PostgreSQL store: {error}") from error
            except psycopg.Error as error:
                raise StoreError(f"PostgreSQL store: {error}") from error

    def _prepare(self) -> None:
        """Migrate the store and create the tables asked for, now if the server can be
        reached; else the first transaction once it can does, so that a process started
        during an outage works once the outage ends."""
        try:
            self._retry(lambda: self._transaction(lambda cursor: None))
        except StoreUnavailable as failure:
            log.warning("%s; the store's tables are created once it can be reached", failure)

    def _create_schema(self, db: psycopg.Connection[Any]) -> None:
        """DDL that other processes may be running at the same moment. ``IF NOT EXISTS``
        does not see a creation not yet committed: once that commits, this one fails
        with "already exists" (a unique violation, or a duplicate type or table), and
        running it again skips what the winner made. Each failure is one object another
        process made, so the attempts are bounded by the objects to make."""
        attempts = len(MIGRATIONS) + 2 * len(self._pending) + 1
        for attempt in range(attempts):
            try:
                with db.transaction(), db.cursor() as cursor:
                    _migrate(cursor)
                    for table in self._pending:
                        cursor.execute(create_sql(table, "postgres"))
                        found = cursor.execute(COLUMNS_SQL, (table.name,)).fetchall()
                        check_table(table, found, "PostgreSQL store")
                self._pending, self._schema_ready = [], True
                return
            except (
                pg_errors.UniqueViolation,
                pg_errors.DuplicateObject,
                pg_errors.DuplicateTable,
            ):
                if attempt == attempts - 1:
                    raise

    # -- the Store protocol ----------------------------------------------------------

    def create_tables(self, tables: Sequence[Table]) -> None:
        """Create them now, or, while the server cannot be reached, before the first
        transaction once it can. A table the server holds in another shape is an error
        now, and the store goes on without the tables asked for."""
        tables = with_histories(tables)
        with self._lock:
            added = [table for table in tables if table not in self._pending]
            self._pending += added
            self._schema_ready = False
        try:
            self._prepare()
        except StoreError:
            with self._lock:
                self._pending = [table for table in self._pending if table not in added]
            raise
        for table in tables:
            self._writer.add(table)

    def claim(self, group: str, partitions: Sequence[int], owner: str) -> dict[int, Claim]:
        def claim(cursor: psycopg.Cursor[Any]) -> dict[int, Claim]:
            claims = {}
            for partition in partitions:
                generation, offset, state = claim_partition(
                    cursor, group, partition, owner, placeholders
                )
                claims[partition] = Claim(
                    generation,
                    offset,
                    bytes(state) if state else None,
                    STATE.read(cursor, group, partition, placeholders),
                    SEEN.read(cursor, group, partition, placeholders),
                )
            return claims

        return self._retry(lambda: self._transaction(claim))

    def commit(
        self,
        group: str,
        partitions: Sequence[PartitionCommit],
        rows: Mapping[str, Sequence[Row]],
        dead_letters: Sequence[DeadLetter] = (),
    ) -> None:
        def commit(cursor: psycopg.Cursor[Any]) -> None:
            for c in partitions:
                cursor.execute(
                    "UPDATE kf_partitions SET next_offset = %s, state = %s "
                    "WHERE grp = %s AND partition = %s AND generation = %s",
                    (c.next_offset, c.state, group, c.partition, c.generation),
                )
                if cursor.rowcount != 1:
                    raise StaleOwnership(
                        f"{group} partition {c.partition}: generation {c.generation} is stale; "
                        "another worker owns it"
                    )
                STATE.append(cursor, group, c.partition, c.keys, placeholders)
                SEEN.append(cursor, group, c.partition, c.seen, placeholders)
            self._writer.write(cursor, rows)
            if dead_letters:
                cursor.executemany(
                    placeholders(DEAD_LETTER_SQL),
                    dead_letter_rows(group, dead_letters, time.time()),
                )

        self._transaction(commit)

    def upsert(self, rows: Mapping[str, Sequence[Row]], valid_from_ms: int | None = None) -> None:
        def upsert(cursor: psycopg.Cursor[Any]) -> None:
            self._writer.write_reference(cursor, rows, valid_from_ms)
            cursor.executemany(
                "INSERT INTO kf_versions VALUES (%s, 1) "
                "ON CONFLICT (name) DO UPDATE SET version = kf_versions.version + 1",
                [(name,) for name in rows],
            )

        self._transaction(upsert)

    def version(self, table: str) -> int:
        found = self.query("SELECT version FROM kf_versions WHERE name = ?", (table,))
        return found[0][0] if found else 0

    def deploy(self, version: AppVersion, starts: Mapping[str, Mapping[int, int]]) -> AppStatus:
        return self._transaction(partial(deploy_version, version=version, starts=starts,
                                         translate=placeholders))  # fmt: skip

    def promote(self, app: str, version: int) -> None:
        self._transaction(partial(promote_version, app=app, version=version,
                                  translate=placeholders))  # fmt: skip

    def retire(self, app: str, version: int, tables: Sequence[str], groups: Sequence[str]) -> None:
        self._transaction(partial(retire_version, app=app, version=version, tables=tables,
                                  groups=groups, translate=placeholders))  # fmt: skip

    def add_key(self, stored: StoredKey) -> None:
        self._transaction(lambda cursor: cursor.execute(placeholders(ADD_KEY_SQL),
                                                        key_row(stored)))  # fmt: skip

    def revoke_key(self, key_id: str, at: float) -> None:
        self._retry(lambda: self._transaction(  # revoking again changes nothing
            lambda cursor: cursor.execute(placeholders(REVOKE_KEY_SQL), (at, key_id))))  # fmt: skip

    def record_scaling(self, state: ScalingState, decision: ScaleDecision | None) -> None:
        def record(cursor: psycopg.Cursor[Any]) -> None:
            for sql, params in scaling_writes(state, decision):
                cursor.execute(placeholders(sql), params)

        self._transaction(record)

    def pause_scaling(self, pool: str, replicas: int | None) -> None:
        row = pause_row(pool, replicas)
        self._retry(lambda: self._transaction(  # pausing again changes nothing
            lambda cursor: cursor.execute(placeholders(PAUSE_SQL), row)))  # fmt: skip

    def record_halt(self, group: str, partition: int, owner: str, halted: Halted) -> None:
        def record(cursor: psycopg.Cursor[Any]) -> None:
            note_halt(cursor, group, partition, owner, halted, placeholders)

        self._retry(lambda: self._transaction(record))  # it sets the same values again

    def delete_dead_letters(self, group: str, partition: int, offsets: Sequence[int]) -> None:
        def delete(cursor: psycopg.Cursor[Any]) -> None:
            cursor.executemany(
                placeholders(DELETE_DEAD_LETTER_SQL),
                [(group, partition, offset) for offset in offsets],
            )

        self._retry(lambda: self._transaction(delete))  # deleting again changes nothing

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def read(cursor: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
            cursor.execute(placeholders(sql), params)
            return cursor.fetchall()

        return self._retry(lambda: self._transaction(read))

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
