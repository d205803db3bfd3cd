"""Maps kept per partition in the store as logs of changes (SQL shared by SQLite and
PostgreSQL): the operators' keyed state, and the event ids counted. Each commit appends
one row to each map it changed: the keys it changed, as a msgpack map whose None values
delete. Once the changes outweigh the oldest row ``MERGE_RATIO`` times, the rows are
merged into one. A commit thus writes about as many bytes as its keys changed, where an
upsert per key would rewrite a page of a B-tree for each key at a random place in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import groupby
from typing import Any, NamedTuple

import msgspec

from kappaflow.store.sql import Translate

MERGE_RATIO = 4
"""A merge reads the oldest row and the changes after it and writes about the oldest
row's size again (the changes mostly overwrite its keys). Merging when the changes are
4 times its size, not once, reads 1.25 bytes and writes 0.25 per byte of change, against
2 and 1: half the work, for a partition's state read at a claim from up to 5 times its
size."""
MERGE_MIN_BYTES = 1 << 20
"""Changes below this size are never merged for size alone..."""
MERGE_MAX_ROWS = 64
"""...but a partition's log is merged once it has this many rows."""

_encode = msgspec.msgpack.Encoder().encode
_decode_encoded = msgspec.msgpack.Decoder(dict[str, msgspec.Raw]).decode
"""A change with each key's value left encoded (None included), to be merged by copying."""
_DELETED = msgspec.Raw(_encode(None))


class KeysAppend(NamedTuple):
    """What `ChangeLog.write` writes to a partition's log: the change as row ``seq``,
    or, when ``merged`` is not None, the whole log merged into that row (no row if it is
    empty: b"")."""

    partition: int
    seq: int
    change: bytes
    merged: bytes | None


class ChangeLog:
    """A map per partition, kept in ``table`` (grp, partition, seq, data) as a log of
    changes, with values of type ``value``."""

    def __init__(self, table: str, value: Any) -> None:
        self.table = table
        self._decode = msgspec.msgpack.Decoder(dict[str, value | None]).decode
        where = f"FROM {table} WHERE grp = ? AND partition = ?"
        self._select = f"SELECT seq, data {where} ORDER BY seq"
        self._sizes = f"SELECT seq, length(data) {where} ORDER BY seq"
        self._insert = f"INSERT INTO {table} VALUES (?, ?, ?, ?)"
        self._delete = f"DELETE {where}"

    def read(self, cursor: Any, group: str, partition: int, sql: Translate = str) -> dict[str, Any]:
        """A partition's map: its log's changes, each decoded and applied in order
        (merging them encoded, as `prepare` does, then decoding the merge, took a claim
        twice as long)."""
        merged: dict[str, Any] = {}
        for change in self._changes(cursor, group, partition, sql):
            if merged:
                merged.update(self._decode(change))
            else:
                merged = self._decode(change)
        if None in merged.values():  # a scan in C, where the filter is one in Python
            merged = {key: value for key, value in merged.items() if value is not None}
        return merged

    def _changes(self, cursor: Any, group: str, partition: int, sql: Translate) -> list[bytes]:
        return [bytes(data) for _, data in cursor.execute(sql(self._select), (group, partition))]

    def append(
        self,
        cursor: Any,
        group: str,
        partition: int,
        changes: Mapping[str, Any],
        sql: Translate = str,
    ) -> None:
        """Append ``changes`` (None deletes a key) to the partition's log; merge the log
        when its changes outweigh its oldest row (the last merge) ``MERGE_RATIO`` times
        or it has grown too long."""
        if (append := self.prepare(cursor, group, partition, changes, sql)) is not None:
            self.write(cursor, group, append, sql)

    def prepare(
        self,
        cursor: Any,
        group: str,
        partition: int,
        changes: Mapping[str, Any],
        sql: Translate = str,
    ) -> KeysAppend | None:
        """`append` up to its writes: it reads the log and encodes and merges, so a
        store can do this before its write transaction (only the partition's owner
        writes its log, and a commit checks that ownership before `write`)."""
        if not changes:
            return None
        sizes = cursor.execute(sql(self._sizes), (group, partition)).fetchall()
        change = _encode(changes)
        seq = sizes[-1][0] + 1 if sizes else 1
        total = sum(size for _, size in sizes[1:]) + len(change)
        oldest = MERGE_RATIO * sizes[0][1] if sizes else 0
        merged = None
        if sizes and (len(sizes) >= MERGE_MAX_ROWS or total > max(oldest, MERGE_MIN_BYTES)):
            merged = _merged([*self._changes(cursor, group, partition, sql), change])
        return KeysAppend(partition, seq, change, merged)

    def write(self, cursor: Any, group: str, append: KeysAppend, sql: Translate = str) -> None:
        """The writes `prepare` prepared."""
        if append.merged is None:
            cursor.execute(sql(self._insert), (group, append.partition, append.seq, append.change))
            return
        cursor.execute(sql(self._delete), (group, append.partition))
        if append.merged:
            cursor.execute(sql(self._insert), (group, append.partition, append.seq, append.merged))


STATE = ChangeLog("kf_state_log", bytes)
"""The operators' keyed state (`PartitionCommit.keys`)."""
SEEN = ChangeLog("kf_seen_log", int)
"""The event ids counted (`PartitionCommit.seen`)."""


def carry_over_keyed_rows(cursor: Any, sql: Translate = str) -> None:
    """Move state kept one row per key by an earlier version (table kf_keys, rows of
    group, partition, key, state) into each partition's log, and drop the table."""
    cursor.execute("SELECT * FROM kf_keys ORDER BY grp, partition")
    for (group, partition), keyed in groupby(cursor.fetchall(), key=lambda row: row[:2]):
        merged = {key: bytes(state) for _, _, key, state in keyed}
        STATE.write(cursor, group, KeysAppend(partition, 1, _encode(merged), None), sql)
    cursor.execute("DROP TABLE kf_keys")


def _merged(changes: Iterable[bytes]) -> bytes:
    """The changes applied in order, as one encoded change without deletions (b"" when
    no key is left). The values are copied as they are encoded: decoding each into
    `bytes` and encoding it again took a fifth longer
    (docs/decisions/025-checkpoints-beside-writers.md)."""
    merged: dict[str, msgspec.Raw] = {}
    for change in changes:
        merged.update(_decode_encoded(change))
    kept = {key: state for key, state in merged.items() if state != _DELETED}
    return _encode(kept) if kept else b""
