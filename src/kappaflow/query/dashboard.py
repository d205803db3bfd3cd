"""The dashboard: ``GET /`` is one self-contained HTML page (no assets fetched from
anywhere) that polls ``GET /status`` and shows, per app stream, the events appended and
processed, their rates, the dead letters, the lag of each partition and its recent
history, the worker that owns it, the partitions an app's processor halted, and the
apps' read queries."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import msgspec

from kappaflow.app import App
from kappaflow.log.base import Log
from kappaflow.metrics import partition_offsets
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
    """Records sent to the dead-letter table (late, undecodable, refused)."""
    workers: int
    """How many workers claimed the partitions last (one that stopped counts until
    another claims its partitions)."""
    partitions: list[PartitionStatus]


class QueryInfo(msgspec.Struct):
    app: str
    path: str
    summary: str


class Status(msgspec.Struct):
    streams: list[StreamStatus]
    queries: list[QueryInfo]


def status(apps: Sequence[App], log: Log, store: Store) -> Status:
    """Where every app stream stands now; raises `KappaflowError` when the log or the
    store cannot say."""
    by_stream: dict[tuple[str, str, str], list[PartitionStatus]] = {}
    noted: dict[str, tuple[dict[int, str], dict[int, Halted]]] = {}
    for app, stream, partition, end, committed in partition_offsets(apps, log, store):
        group = app.group(stream)
        if group not in noted:
            noted[group] = store.owners(group), store.halts(group)
        owners, halts = noted[group]
        by_stream.setdefault((app.name, stream.name, group), []).append(
            PartitionStatus(partition, end, committed, max(0, end - committed),
                            owners.get(partition), halts.get(partition))
        )  # fmt: skip
    streams = [
        StreamStatus(app, stream, group, sum(p.appended for p in parts),
                     sum(p.processed for p in parts), sum(p.lag for p in parts),
                     store.dead_letter_count(group),
                     len({p.worker for p in parts if p.worker is not None}), parts)
        for (app, stream, group), parts in by_stream.items()
    ]  # fmt: skip
    queries = [QueryInfo(app.name, q.path, q.summary) for app in apps for q in app.queries]
    return Status(streams, queries)
