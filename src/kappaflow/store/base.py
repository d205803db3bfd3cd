"""The Store protocol: result tables, operator state, the event ids counted and
per-partition committed offsets with an ownership generation, all written in one
transaction per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from kappaflow.store.tables import R, Row, Table


class Claim(NamedTuple):
    """What a worker gets when it takes a partition over."""

    generation: int
    next_offset: int
    state: bytes | None
    keys: Mapping[str, bytes] = {}
    """The partition's keyed state: a value per key."""
    seen: Mapping[str, int] = {}
    """The event ids the partition counted, each with its event time then (ms): see
    `kappaflow.stream.dedup.SeenIds`."""


class PartitionCommit(NamedTuple):
    partition: int
    generation: int
    next_offset: int
    state: bytes
    keys: Mapping[str, bytes | None] = {}
    """Keyed state changed since the last commit; None deletes the key."""
    seen: Mapping[str, int | None] = {}
    """Event ids counted since the last commit (with the partition's event time then,
    in ms), or forgotten (None)."""


class DeadLetter(NamedTuple):
    """A record a worker could not process: where it is in the log, why (``kind:
    details``, see `reason_kind`), and the record as the log holds it."""

    partition: int
    offset: int
    reason: str
    payload: bytes


def reason_kind(reason: str) -> str:
    """What a dead letter's reason is filtered and counted by: its part before the
    first colon (``late``, ``undecodable``, or a processor's own word)."""
    return reason.partition(":")[0]


class StoredDeadLetter(NamedTuple):
    """A dead letter as the store keeps it."""

    group: str
    partition: int
    offset: int
    reason: str
    payload: bytes
    at: float
    """When it was dead-lettered: the commit that wrote it (Unix seconds)."""


class DeadLetterFilter(NamedTuple):
    """Which dead letters: those of ``groups`` and, for each field given, of that
    reason kind (see `reason_kind`), dead-lettered at or after ``since`` (Unix
    seconds), on that partition, at an offset in one of the inclusive ranges
    ``offsets``."""

    groups: Sequence[str]
    kind: str | None = None
    since: float | None = None
    partition: int | None = None
    offsets: Sequence[tuple[int, int]] = ()


class Halted(msgspec.Struct):
    """A partition whose app processor raised: where it stopped and why, since when and
    when it is tried again (Unix seconds)."""

    offset: int
    error: str
    since: float
    retry_at: float


AppStatus = Literal["live", "deployed", "retired"]
"""An app version's status: ``live`` serves its app's queries (one per app),
``deployed`` runs beside it (catching up, or kept for a roll-back), ``retired`` is
stopped, its tables and progress dropped."""


class AppVersion(NamedTuple):
    """An app version as the store records it (see `kappaflow.deployments`)."""

    app: str
    version: int
    module: str
    """The module whose ``create_app`` builds it."""
    status: AppStatus
    deployed_at: float
    """Unix seconds."""
    note: str
    """Where its workers started, for every surface that shows it."""

    @property
    def ref(self) -> str:
        return f"{self.app}@{self.version}"


DECISIONS_KEPT = 20
"""Scale decisions the store keeps per pool, for the dashboard."""
Scope = Literal["ingest", "query", "admin", "metrics"]
"""What an API key may do (`kappaflow.keys`)."""


class ApiKey(msgspec.Struct, frozen=True):
    """An API key as the store keeps it, without its secret (`kappaflow.keys`)."""

    id: str
    name: str
    scopes: tuple[Scope, ...]
    streams: tuple[str, ...]
    """The streams an ``ingest`` key may post to; none: every stream."""
    created_at: float
    revoked_at: float | None = None

    def allows(self, scope: Scope, stream: str | None = None) -> bool:
        """Whether the key has ``scope`` (for ingest, to ``stream``)."""
        if self.revoked_at is not None or scope not in self.scopes:
            return False
        return stream is None or not self.streams or stream in self.streams


class StoredKey(msgspec.Struct, frozen=True):
    """An API key with the salt and hash of its secret's token."""

    key: ApiKey
    salt: bytes
    digest: bytes


class ScalingState(msgspec.Struct, frozen=True):
    """An autoscaler's pool as it last decided (`kappaflow.scale.supervisor`), and its
    pause (``kappaflow scale pause``)."""

    pool: str
    """``live`` (the apps' live versions), or an app version (``video@2``)."""
    current: int
    desired: int
    lag: int
    """Records not yet processed, every stream of the pool."""
    policy_lag: int
    """The lag the policy scaled on (persistent lag left out, capped per stream)."""
    threshold: int
    active: bool
    at: float
    """Unix seconds."""
    paused: int | None = None
    """The replicas the pool is held at, None when not paused."""


class ScaleDecision(msgspec.Struct, frozen=True):
    """An autoscaler's change of its pool's replicas, and why."""

    pool: str
    at: float
    previous: int
    replicas: int
    lag: int
    reason: str


class Store(Protocol):
    def create_tables(self, tables: Sequence[Table]) -> None:
        """Create the result tables (and the store's own) if missing."""

    def claim(self, group: str, partitions: Sequence[int], owner: str) -> dict[int, Claim]:
        """Take ownership of partitions for consumer ``group``: bumps each generation,
        which fences every earlier owner, notes ``owner`` (which worker claimed them,
        with no halt) and returns the committed offset and state."""

    def commit(
        self,
        group: str,
        partitions: Sequence[PartitionCommit],
        rows: Mapping[str, Sequence[Row]],
        dead_letters: Sequence[DeadLetter] = (),
    ) -> None:
        """Write rows (by table name: a typed table's structs, or any table's tuples in
        its column order), dead letters, state and next offsets atomically. Raises
        `StaleOwnership`, writing nothing, if any partition's generation moved on."""

    def upsert(self, rows: Mapping[str, Sequence[Row]], valid_from_ms: int | None = None) -> None:
        """Write rows outside any partition (reference data such as a catalog), in one
        transaction that also bumps each written table's version; the rows of a table
        with history are also kept valid from ``valid_from_ms`` (None: now)."""

    def version(self, table: str) -> int:
        """How many times `upsert` has written ``table`` (0: never)."""

    def committed_offsets(self, group: str) -> dict[int, int]:
        """Per partition, the next offset ``group`` will process."""

    def owners(self, group: str) -> dict[int, str]:
        """Per partition, the owner that claimed it last."""

    def dead_letters(self, group: str) -> list[tuple[int, int, str, bytes]]:
        """(partition, offset, reason, payload) of every dead letter of ``group``, in
        (partition, offset) order."""

    def find_dead_letters(
        self, which: DeadLetterFilter, limit: int, newest_first: bool = True
    ) -> list[StoredDeadLetter]:
        """Up to ``limit`` of the dead letters ``which`` selects: the newest first, or
        in (group, partition, offset) order."""

    def delete_dead_letters(self, group: str, partition: int, offsets: Sequence[int]) -> None:
        """Remove dead letters of ``group``'s ``partition`` (those replayed)."""

    def dead_letter_counts(self, group: str) -> dict[str, int]:
        """How many dead letters ``group`` has, by reason kind (see `reason_kind`)."""

    def record_halt(self, group: str, partition: int, owner: str, halted: Halted) -> None:
        """Note that ``partition`` halted, unless ``owner`` no longer owns it; the
        partition's next claim clears the note."""

    def halts(self, group: str) -> dict[int, Halted]:
        """The partitions of ``group`` noted halted since they were last claimed."""

    def app_versions(self) -> list[AppVersion]:
        """Every app version recorded, by app and version."""

    def deploy(self, version: AppVersion, starts: Mapping[str, Mapping[int, int]]) -> AppStatus:
        """Record ``version`` (replacing a retired record of it), live if its app has
        no live version, else deployed; each group of ``starts`` (group -> partition ->
        offset) starts at those offsets. Returns the status given."""

    def promote(self, app: str, version: int) -> None:
        """Make deployed ``version`` its app's live one, and the live one deployed, in
        one transaction; `AppError` if it is not deployed."""

    def retire(self, app: str, version: int, tables: Sequence[str], groups: Sequence[str]) -> None:
        """Drop ``tables``, the progress, state and dead letters of ``groups`` and what
        its pool's autoscaler recorded, and note ``version`` retired, in one transaction;
        `AppError` if it is live or not deployed. A commit of those groups is then
        refused (`StaleOwnership`)."""

    def add_key(self, stored: StoredKey) -> None:
        """Keep a new API key."""

    def api_keys(self) -> list[StoredKey]:
        """Every API key, revoked ones included, the oldest first."""

    def revoke_key(self, key_id: str, at: float) -> None:
        """Note key ``key_id`` revoked at ``at`` (Unix seconds)."""

    def record_scaling(self, state: ScalingState, decision: ScaleDecision | None) -> None:
        """Keep ``state`` as its pool's (its pause left as it is) and ``decision`` among
        the pool's last `DECISIONS_KEPT`."""

    def pause_scaling(self, pool: str, replicas: int | None) -> None:
        """Hold ``pool`` at ``replicas``; None: let its autoscaler decide again."""

    def scaling(self) -> list[ScalingState]:
        """Every pool's state, with its pause."""

    def scale_decisions(self) -> list[ScaleDecision]:
        """The pools' last decisions, the newest first."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query against the result tables."""

    def select(
        self,
        table: Table[R],
        where: str = "",
        params: Sequence[Any] = (),
        order_by: str = "",
        limit: int | None = None,
    ) -> list[R]:
        """The rows of ``table`` (``SELECT`` its columns ``WHERE where ORDER BY order_by
        LIMIT limit``, each part if given; ``?`` marks a parameter): a typed table's as
        its structs, another's as tuples. In SQLite, dates and datetimes among
        ``params`` are compared as the table stores them (see `sql_value`)."""

    def close(self) -> None: ...
