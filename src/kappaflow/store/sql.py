"""SQL shared by the SQLite and PostgreSQL stores (and valid on YugabyteDB's YSQL):
table creation, upserts by table mode, distinct counters, the claims, reads and writes of
the store's own tables (offsets, owners, dead letters, halts), and the row writer.
``kf_claims`` holds who claimed each partition last and, if its processor raised since,
where it halted: a claim clears that, so a halt shows until the partition is claimed
again (to try it again, or by another worker)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from msgspec.structs import astuple

from kappaflow.errors import AppError, StoreError
from kappaflow.store.base import (
    DECISIONS_KEPT,
    ApiKey,
    AppStatus,
    AppVersion,
    DeadLetter,
    DeadLetterFilter,
    Halted,
    ScaleDecision,
    ScalingState,
    StoredDeadLetter,
    StoredKey,
    reason_kind,
)
from kappaflow.store.tables import (
    VALID_FROM,
    ColumnType,
    R,
    Row,
    Table,
    row_writer,
    rows_read,
    sql_value,
)

Translate = Callable[[str], str]
"""Turns the ``?`` placeholders of shared SQL into a driver's."""


def upsert_sql(table: Table, dialect: str = "sqlite") -> str:
    """INSERT ... ON CONFLICT for a table's mode (SQL shared by SQLite and PostgreSQL),
    except a replace in SQLite: INSERT OR REPLACE writes the same row (every column,
    into a table with no other constraint) for fewer instructions than DO UPDATE."""
    names = table.column_names
    columns = ", ".join(names)
    marks = ", ".join("?" for _ in names)
    values = [n for n in names if n not in table.key]
    insert = f"INSERT INTO {table.name} ({columns}) VALUES ({marks})"
    if not values or table.mode == "distinct":
        return f"{insert} ON CONFLICT DO NOTHING"
    if table.mode == "replace" and dialect == "sqlite":
        return f"INSERT OR REPLACE INTO {table.name} ({columns}) VALUES ({marks})"
    merged = dict(table.merge) if table.mode == "add" else dict.fromkeys(values, "replace")
    sets = ", ".join(f"{n} = {_merged(table.name, n, merged.get(n, 'add'), dialect)}"
                     for n in values)  # fmt: skip
    later = f" WHERE excluded.{table.time} > {table.name}.{table.time}" if table.time else ""
    return f"{insert} ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {sets}{later}"


def _merged(table: str, column: str, merge: str, dialect: str) -> str:
    """The SQL of a stored value merged with a written one. The least or greatest of a
    value and NULL is the value, as PostgreSQL's LEAST and GREATEST have it (SQLite's
    min and max of several arguments are NULL if any is)."""
    stored, written = f"{table}.{column}", f"excluded.{column}"
    if merge == "replace":
        return written
    if merge == "add":
        return f"{stored} + {written}"
    if dialect == "postgres":
        return f"{'LEAST' if merge == 'min' else 'GREATEST'}({stored}, {written})"
    return f"coalesce({merge}({stored}, {written}), {stored}, {written})"


def count_sql(target: Table, column: str) -> str:
    """Add to ``column`` of ``target``'s row with the given key (created at 0)."""
    names = [*target.key, column]
    marks = ", ".join("?" for _ in names)
    return (
        f"INSERT INTO {target.name} ({', '.join(names)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(target.key)}) DO UPDATE SET "
        f"{column} = {target.name}.{column} + excluded.{column}"
    )


def check_table(table: Table, found: Sequence[tuple[str, int | None]], store: str) -> None:
    """Raise `StoreError` when the ``store``'s table ``table.name``, ``found`` as its
    columns in order, each with its place in the primary key (None if not in it), is not
    the one the app declares: an earlier version of the app created it, and the rows the
    app writes now do not fit it."""
    columns = [name for name, _ in found]
    key = [name for _, name in sorted((at, name) for name, at in found if at is not None)]
    if (tuple(columns), tuple(key)) == (table.column_names, table.key):
        return
    raise StoreError(
        f"{store}: table {table.name} has columns ({', '.join(columns)}) keyed by "
        f"({', '.join(key)}), but the app declares ({', '.join(table.column_names)}) keyed "
        f"by ({', '.join(table.key)}): an earlier version of the app created it. Move this "
        "store aside (the SQLite file, or the PostgreSQL database) and start again: the "
        "workers compute every result again from the log, as far back as it keeps events"
    )


SQL_TYPES: dict[str, dict[ColumnType, str]] = {
    "sqlite": {"TEXT": "TEXT", "INTEGER": "INTEGER", "REAL": "REAL", "BOOLEAN": "INTEGER",
               "BLOB": "BLOB", "DATE": "TEXT", "TIMESTAMP": "TEXT"},
    "postgres": {"TEXT": "TEXT", "INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION",
                 "BOOLEAN": "BOOLEAN", "BLOB": "BYTEA", "DATE": "DATE",
                 "TIMESTAMP": "TIMESTAMPTZ"},
}  # fmt: skip
"""Each column type in each dialect: SQLite keeps booleans as 0 and 1, and dates and
datetimes as ISO 8601 text (`kappaflow.store.tables.sql_value`)."""


def create_sql(table: Table, dialect: str = "sqlite") -> str:
    """The columns an ``add`` table adds up default to 0, so counters can start
    anywhere."""
    types = SQL_TYPES[dialect]
    kept = [*table.key, *dict(table.merge)]
    added = [n for n in table.column_names if n not in kept] if table.mode == "add" else []

    def column(name: str, kind: ColumnType) -> str:
        if name in added:
            return f"{name} {types[kind]} NOT NULL DEFAULT 0"
        return f"{name} {types[kind]}" + (" NOT NULL" if name in table.not_null else "")

    columns = ", ".join(column(name, kind) for name, kind in table.columns)
    suffix = " WITHOUT ROWID" if dialect == "sqlite" else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} "
        f"({columns}, PRIMARY KEY ({', '.join(table.key)})){suffix}"
    )


CLAIM_SQL = (
    "INSERT INTO kf_partitions (grp, partition, generation, next_offset) VALUES (?, ?, 1, 0) "
    "ON CONFLICT (grp, partition) "
    "DO UPDATE SET generation = kf_partitions.generation + 1 "
    "RETURNING generation, next_offset, state"
)
"""`Store.claim` of one partition: (group, partition)."""
OWNER_SQL = (
    "INSERT INTO kf_claims (grp, partition, owner) VALUES (?, ?, ?) "
    "ON CONFLICT (grp, partition) DO UPDATE SET owner = excluded.owner, at_offset = NULL, "
    "error = NULL, since = NULL, retry_at = NULL"
)
"""Who claimed the partition, with no halt yet: (group, partition, owner)."""
HALT_SQL = (
    "UPDATE kf_claims SET at_offset = ?, error = ?, since = ?, retry_at = ? "
    "WHERE grp = ? AND partition = ? AND owner = ?"
)
"""`Store.record_halt`: a halt noted by the partition's owner only."""


def claim_partition(
    cursor: Any, group: str, partition: int, owner: str, translate: Translate = str
) -> tuple[int, int, bytes | None]:
    """Claim one partition for ``owner`` (see `Store.claim`): its generation, next
    offset and state. ``translate`` turns the ``?`` placeholders into the driver's."""
    generation, offset, state = cursor.execute(translate(CLAIM_SQL), (group, partition)).fetchone()
    cursor.execute(translate(OWNER_SQL), (group, partition, owner))
    return generation, offset, state


def note_halt(
    cursor: Any, group: str, partition: int, owner: str, halted: Halted, translate: Translate = str
) -> None:
    """`Store.record_halt` with a DB-API cursor."""
    cursor.execute(
        translate(HALT_SQL),
        (halted.offset, halted.error, halted.since, halted.retry_at, group, partition, owner),
    )


DEAD_LETTER_SQL = (
    'INSERT INTO kf_dead_letters (grp, partition, "offset", reason, payload, kind, '
    'dead_lettered_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (grp, partition, "offset") '
    "DO UPDATE SET reason = excluded.reason, payload = excluded.payload, kind = excluded.kind, "
    "dead_lettered_at = excluded.dead_lettered_at"
)
"""A dead letter written by a commit: `dead_letter_rows`."""
DELETE_DEAD_LETTER_SQL = (
    'DELETE FROM kf_dead_letters WHERE grp = ? AND partition = ? AND "offset" = ?'
)
"""`Store.delete_dead_letters`: (group, partition, offset)."""


APPS_SQL = "SELECT app, version, module, status, deployed_at, note FROM kf_apps"
OWN_TABLES = ("kf_partitions", "kf_state_log", "kf_seen_log", "kf_dead_letters", "kf_claims")
"""The store's tables that hold a group's progress, state and dead letters."""


def deploy_version(
    cursor: Any,
    version: AppVersion,
    starts: Mapping[str, Mapping[int, int]],
    translate: Translate = str,
) -> AppStatus:
    """`Store.deploy` with a DB-API cursor."""
    live = cursor.execute(translate(APPS_SQL + " WHERE app = ? AND status = 'live'"),
                          (version.app,)).fetchone()  # fmt: skip
    status: AppStatus = "deployed" if live and live[1] != version.version else "live"
    cursor.execute(
        translate(
            "INSERT INTO kf_apps VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app, version) DO UPDATE "
            "SET module = excluded.module, status = excluded.status, "
            "deployed_at = excluded.deployed_at, note = excluded.note"
        ),
        (*version[:3], status, *version[4:]),
    )
    cursor.executemany(
        translate("INSERT INTO kf_partitions (grp, partition, generation, next_offset) "
                  "VALUES (?, ?, 0, ?) ON CONFLICT (grp, partition) DO NOTHING"),
        [(group, partition, offset) for group, offsets in starts.items()
         for partition, offset in offsets.items()],
    )  # fmt: skip
    return status


def promote_version(cursor: Any, app: str, version: int, translate: Translate = str) -> None:
    """`Store.promote` with a DB-API cursor."""
    _version_status(cursor, app, version, "deployed", translate)
    cursor.execute(translate("UPDATE kf_apps SET status = 'deployed' "
                             "WHERE app = ? AND status = 'live'"), (app,))  # fmt: skip
    cursor.execute(translate("UPDATE kf_apps SET status = 'live' WHERE app = ? AND version = ?"),
                   (app, version))  # fmt: skip


def retire_version(
    cursor: Any,
    app: str,
    version: int,
    tables: Sequence[str],
    groups: Sequence[str],
    translate: Translate = str,
) -> None:
    """`Store.retire` with a DB-API cursor."""
    _version_status(cursor, app, version, "deployed", translate)
    for table in tables:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    for own in OWN_TABLES:
        cursor.executemany(translate(f"DELETE FROM {own} WHERE grp = ?"),
                           [(group,) for group in groups])  # fmt: skip
    for own in ("kf_scaling", "kf_scale_decisions"):  # its pool's autoscaler
        cursor.execute(translate(f"DELETE FROM {own} WHERE pool = ?"), (f"{app}@{version}",))
    cursor.execute(translate("UPDATE kf_apps SET status = 'retired' WHERE app = ? AND version = ?"),
                   (app, version))  # fmt: skip


def _version_status(
    cursor: Any, app: str, version: int, wanted: AppStatus, translate: Translate
) -> None:
    found = cursor.execute(translate("SELECT status FROM kf_apps WHERE app = ? AND version = ?"),
                           (app, version)).fetchone()  # fmt: skip
    if found is None or found[0] != wanted:
        now = "not deployed" if found is None else found[0]
        raise AppError(f"{app}@{version} is {now}, not {wanted}")


ADD_KEY_SQL = (
    "INSERT INTO kf_api_keys (id, name, scopes, streams, created_at, revoked_at, salt, digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
REVOKE_KEY_SQL = "UPDATE kf_api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"


SCALING_SQL = (
    "INSERT INTO kf_scaling (pool, current, desired, lag, policy_lag, threshold, active, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pool) DO UPDATE SET current = "
    "excluded.current, desired = excluded.desired, lag = excluded.lag, policy_lag = "
    "excluded.policy_lag, threshold = excluded.threshold, active = excluded.active, "
    "at = excluded.at"
)
PAUSE_SQL = (
    "INSERT INTO kf_scaling (pool, current, desired, lag, policy_lag, threshold, active, at, "
    "paused) VALUES (?, 0, 0, 0, 0, 0, 0, ?, ?) ON CONFLICT (pool) DO UPDATE SET paused = "
    "excluded.paused"
)


def scaling_writes(
    state: ScalingState, decision: ScaleDecision | None
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements (``?`` placeholders) of `Store.record_scaling`."""
    writes: list[tuple[str, tuple[Any, ...]]] = [(SCALING_SQL, (
        state.pool, state.current, state.desired, state.lag, state.policy_lag,
        state.threshold, int(state.active), state.at,
    ))]  # fmt: skip
    if decision is not None:
        writes += [
            ("INSERT INTO kf_scale_decisions (pool, at, previous, replicas, lag, reason) "
             "VALUES (?, ?, ?, ?, ?, ?)", (decision.pool, decision.at, decision.previous,
                                          decision.replicas, decision.lag, decision.reason)),
            ("DELETE FROM kf_scale_decisions WHERE pool = ? AND at < (SELECT MIN(at) FROM "
             "(SELECT at FROM kf_scale_decisions WHERE pool = ? ORDER BY at DESC LIMIT ?) "
             "AS kept)", (decision.pool, decision.pool, DECISIONS_KEPT)),
        ]  # fmt: skip
    return writes


def pause_row(pool: str, replicas: int | None) -> tuple[Any, ...]:
    """The parameters of `PAUSE_SQL`."""
    return pool, time.time(), replicas


def key_row(stored: StoredKey) -> tuple[Any, ...]:
    """The parameters of `ADD_KEY_SQL`."""
    key = stored.key
    return (key.id, key.name, ",".join(key.scopes), ",".join(key.streams), key.created_at,
            key.revoked_at, stored.salt, stored.digest)  # fmt: skip


def dead_letter_rows(group: str, letters: Sequence[DeadLetter], at: float) -> list[tuple[Any, ...]]:
    """The parameters of `DEAD_LETTER_SQL` for ``letters`` dead-lettered at ``at``."""
    return [(group, *letter, reason_kind(letter.reason), at) for letter in letters]


def select_dead_letters(
    group: str, which: DeadLetterFilter, limit: int, newest_first: bool
) -> tuple[str, list[Any]]:
    """`Store.find_dead_letters` of one group as SQL and its parameters: one walk of an
    index by group and time (or kind and time), or of the primary key."""
    where, params = ["grp = ?"], [group]
    for condition, value in (
        ("kind = ?", which.kind),
        ("dead_lettered_at >= ?", which.since),
        ("partition = ?", which.partition),
    ):
        if value is not None:
            where.append(condition)
            params.append(value)
    if which.offsets:
        where.append("(" + " OR ".join('"offset" BETWEEN ? AND ?' for _ in which.offsets) + ")")
        params.extend(bound for bounds in which.offsets for bound in bounds)
    order = (
        'dead_lettered_at DESC, partition DESC, "offset" DESC'
        if newest_first
        else ('partition, "offset"')
    )
    sql = (
        'SELECT grp, partition, "offset", reason, payload, dead_lettered_at FROM kf_dead_letters '
        f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    )
    return sql, [*params, limit]


class StoreReads:
    """Reads of the store's own tables, and `Store.select`, that both SQL stores answer
    with the same SQL, through their ``query``."""

    query: Callable[..., list[tuple[Any, ...]]]
    dialect: str

    def select(
        self,
        table: Table[R],
        where: str = "",
        params: Sequence[Any] = (),
        order_by: str = "",
        limit: int | None = None,
    ) -> list[R]:
        sql = f"SELECT {', '.join(table.column_names)} FROM {table.name}"
        sql += f" WHERE {where}" if where else ""
        sql += f" ORDER BY {order_by}" if order_by else ""
        params = [*(map(sql_value, params) if self.dialect == "sqlite" else params)]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return rows_read(table, self.query(sql, params))

    def app_versions(self) -> list[AppVersion]:
        return [AppVersion(*row) for row in self.query(APPS_SQL + " ORDER BY app, version")]

    def api_keys(self) -> list[StoredKey]:
        return [
            StoredKey(ApiKey(key_id, name, tuple(filter(None, scopes.split(","))),  # type: ignore[arg-type]
                             tuple(filter(None, streams.split(","))), created_at, revoked_at),
                      bytes(salt), bytes(digest))
            for key_id, name, scopes, streams, created_at, revoked_at, salt, digest in self.query(
                "SELECT id, name, scopes, streams, created_at, revoked_at, salt, digest "
                "FROM kf_api_keys ORDER BY created_at, id"
            )
        ]  # fmt: skip

    def scaling(self) -> list[ScalingState]:
        rows = self.query("SELECT pool, current, desired, lag, policy_lag, threshold, active, "
                          "at, paused FROM kf_scaling ORDER BY pool")  # fmt: skip
        return [ScalingState(*row[:6], bool(row[6]), *row[7:]) for row in rows]

    def scale_decisions(self) -> list[ScaleDecision]:
        return [ScaleDecision(*row) for row in self.query(
            "SELECT pool, at, previous, replicas, lag, reason FROM kf_scale_decisions "
            "ORDER BY at DESC, pool")]  # fmt: skip

    def committed_offsets(self, group: str) -> dict[int, int]:
        found = self.query(
            "SELECT partition, next_offset FROM kf_partitions WHERE grp = ?", (group,)
        )
        return dict(found)  # type: ignore[arg-type]

    def owners(self, group: str) -> dict[int, str]:
        return dict(self.query("SELECT partition, owner FROM kf_claims WHERE grp = ?", (group,)))

    def dead_letters(self, group: str) -> list[tuple[int, int, str, bytes]]:
        return [
            (partition, offset, reason, bytes(payload))
            for partition, offset, reason, payload in self.query(
                'SELECT partition, "offset", reason, payload FROM kf_dead_letters '
                'WHERE grp = ? ORDER BY partition, "offset"',
                (group,),
            )
        ]

    def find_dead_letters(
        self, which: DeadLetterFilter, limit: int, newest_first: bool = True
    ) -> list[StoredDeadLetter]:
        # Group by group: each query walks an index, where one over several groups
        # (grp IN ...) sorts all their rows for the planners that pick the primary key.
        found = [
            StoredDeadLetter(group, partition, offset, reason, bytes(payload), at)
            for each in sorted(set(which.groups))
            for group, partition, offset, reason, payload, at in self.query(
                *select_dead_letters(each, which, limit, newest_first)
            )
        ]
        if newest_first:
            found.sort(key=lambda letter: (letter.at, letter.group), reverse=True)
        return found[:limit]

    def dead_letter_counts(self, group: str) -> dict[str, int]:
        return dict(
            self.query(  # type: ignore[arg-type]
                "SELECT kind, count(*) FROM kf_dead_letters WHERE grp = ? "
                "GROUP BY kind ORDER BY count(*) DESC, kind",
                (group,),
            )
        )

    def halts(self, group: str) -> dict[int, Halted]:
        return {
            partition: Halted(offset, error, since, retry_at)
            for partition, offset, error, since, retry_at in self.query(
                "SELECT partition, at_offset, error, since, retry_at FROM kf_claims "
                "WHERE grp = ? AND at_offset IS NOT NULL",
                (group,),
            )
        }


class RowWriter:
    """Writes result rows with one DB-API cursor, honouring each table's mode.
    ``translate`` turns the ``?`` placeholders into the driver's, and ``dialect`` picks
    the upserts (see `upsert_sql`); errors of class ``unavailable`` pass through (the
    caller retries), other ``failure`` errors become `StoreError`."""

    def __init__(
        self,
        failure: type[Exception],
        unavailable: type[Exception],
        translate: Callable[[str], str] = lambda sql: sql,
        dialect: str = "sqlite",
    ) -> None:
        self.failure, self.unavailable, self.translate = failure, unavailable, translate
        self.dialect = dialect
        self.tables: dict[str, Table] = {}
        self.upserts: dict[str, str] = {}
        self.turns: dict[str, Callable[[Sequence[Row]], Iterable[Row]]] = {}
        """Per table whose rows are turned before they are written, what turns them."""

    def add(self, table: Table) -> None:
        self.tables[table.name] = table
        self.upserts[table.name] = self.translate(upsert_sql(table, self.dialect))
        turn = row_writer(table, self.dialect)
        if turn is not None:
            self.turns[table.name] = turn

    def write(self, cursor: Any, rows: Mapping[str, Sequence[Row]]) -> None:
        for name, table_rows in rows.items():
            if not table_rows:
                continue
            table = self.tables.get(name)
            if table is None:
                raise StoreError(f"no table {name!r}: create it first")
            turn = self.turns.get(name)
            written = table_rows if turn is None else turn(table_rows)
            try:
                if table.counts is None:
                    cursor.executemany(self.upserts[name], written)
                else:
                    self._write_distinct(cursor, table, written)
            except self.unavailable:
                raise
            except self.failure as error:
                raise StoreError(f"writing table {name}: {error}") from error

    def write_reference(
        self, cursor: Any, rows: Mapping[str, Sequence[Row]], valid_from_ms: int | None
    ) -> None:
        """`write` reference ``rows``, and keep those of each table with history valid
        from ``valid_from_ms`` (None: now). A history still empty first takes the
        table's rows as they were, valid from 0."""
        valid_from = round(time.time() * 1000) if valid_from_ms is None else valid_from_ms
        kept: dict[str, list[Row]] = {}
        for name, table_rows in rows.items():
            table = self.tables.get(name)
            if table is None or not table.history or not table_rows:
                continue
            history = table.history_table
            columns = ", ".join(table.column_names)
            # (ON CONFLICT: another upload may have seeded it meanwhile)
            cursor.execute(f"INSERT INTO {history.name} ({VALID_FROM}, {columns}) "
                           f"SELECT 0, {columns} FROM {name} "
                           f"WHERE NOT EXISTS (SELECT 1 FROM {history.name}) "
                           "ON CONFLICT DO NOTHING")  # fmt: skip
            kept[history.name] = [
                (valid_from, *(row if isinstance(row, tuple) else astuple(row)))
                for row in table_rows
            ]
        self.write(cursor, rows)
        self.write(cursor, kept)

    def _write_distinct(self, cursor: Any, table: Table, rows: Iterable[Any]) -> None:
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
        if added:
            cursor.executemany(
                self.translate(count_sql(target, column)), [(*k, n) for k, n in added.items()]
            )
