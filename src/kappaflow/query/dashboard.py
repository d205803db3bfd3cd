"""The dashboard: ``GET /`` is one self-contained HTML page (no assets fetched from
anywhere) that polls ``GET /status`` and shows, per app stream, the events appended and
processed, their rates, the dead letters by reason (in a warning colour while they
grow), the lag of each partition and its recent history, the worker that owns it, the
partitions an app's processor halted, and the read queries."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import msgspec

from kappaflow.app import App
from kappaflow.log.base import Log
from kappaflow.metrics import partition_offsets
from kappaflow.query.service import served_queries
from kappaflow.store.base import Halted, Store

PAGE = files("kappaflow.query").joinpath("dashboard.html").read_bytes()


class PartitionStatus(msgspec.Struct):
    partition: int
    appended: int
    """The log's end offset: the records in it (on Kafka, with a control record after
    each append's records)."""
    processed: int
    """The offset the stream's workers have committed up to."""
    lag: int
    worker: str | None = None
    """The worker that claimed the partition last (host:pid); None if none has."""
    halted: Halted | None = None
    """Set while the app's processor, having raised here, holds the partition at
    ``processed``."""


class StreamStatus(msgspec.Struct):
    app: str
    stream: str
    group: str
    appended: int
    processed: int
    lag: int
    dead_letters: int
    """Records in the dead letters (late, undecodable, refused); a replay takes them out."""
    dead_letters_by_reason: dict[str, int]
    """The same by reason kind (``late``, ``undecodable``, ...), the most first."""
    workers: int
    """How many workers claimed the partitions last (one that stopped counts until
    another claims its partitions)."""
    partitions: list[PartitionStatus]


class QueryInfo(msgspec.Struct):
    app: str
    """The app that declares the query (``kappaflow`` for its own)."""
    path: str
    summary: str


class Status(msgspec.Struct):
    streams: list[StreamStatus]
    queries: list[QueryInfo]


def status(apps: Sequence[App], log: Log, store: Store) -> Status:
    """Where every app stream stands now; raises `KappaflowError` when the log or the
    store cannot say."""
    offsets: dict[tuple[str, str, str], list[tuple[int, int, int]]] = {}
    for app, stream, partition, end, committed in partition_offsets(apps, log, store):
        key = (app.name, stream.name, app.group(stream))
        offsets.setdefault(key, []).append((partition, end, committed or 0))
    streams = [_stream_status(store, *names, found) for names, found in offsets.items()]
    queries = [QueryInfo(owner, q.path, q.summary) for owner, q in served_queries(apps)]
    return Status(streams, queries)


def _stream_status(
    store: Store, app: str, stream: str, group: str, offsets: list[tuple[int, int, int]]
) -> StreamStatus:
    """A stream's status from its partitions' (partition, end, committed) offsets."""
    owners, halts, dead = store.owners(group), store.halts(group), store.dead_letter_counts(group)
    parts = [
        PartitionStatus(partition, end, committed, max(0, end - committed),
                        owners.get(partition), halts.get(partition))
        for partition, end, committed in offsets
    ]  # fmt: skip
    return StreamStatus(app, stream, group, sum(p.appended for p in parts),
                        sum(p.processed for p in parts), sum(p.lag for p in parts),
                        sum(dead.values()), dead,
                        len({p.worker for p in parts if p.worker is not None}), parts)  # fmt: skip
