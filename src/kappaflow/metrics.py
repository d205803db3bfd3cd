"""Prometheus metrics of every kappaflow process. Processes started by ``kappaflow up``
share a directory (``PROMETHEUS_MULTIPROC_DIR``, set before they start) and the HTTP
service's ``/metrics`` adds them up; a process on its own exports just its own. Lag
is computed when scraped, from the log's end offsets and the store's commits
(ingest's own families are in `kappaflow.ingest.metrics`, which needs no store). Every
family docs/operations.md lists exists from start, at 0 (`declare`): an alert on a family
without samples would see "no data" instead."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from kappaflow.app import App, Stream
from kappaflow.errors import KappaflowError
from kappaflow.ingest.metrics import (
    EVENTS_INGESTED,
    REJECTION_REASONS,
    REQUESTS_REJECTED,
    UNKNOWN_STREAM,
)
from kappaflow.log.base import Log
from kappaflow.settings import MULTIPROCESS_VARIABLE
from kappaflow.store.base import Store

EVENTS_PROCESSED = Counter(
    "kappaflow_events_processed", "Log records processed and committed by workers.", ["group"]
)
DEAD_LETTERS = Counter(
    "kappaflow_dead_letters", "Records sent to the dead-letter table, by reason.",
    ["group", "reason"],
)  # fmt: skip
DEAD_LETTER_REASONS = ("late", "duplicate", "undecodable", "processor", "store")
"""The worker's own reasons; an app's processor may refuse records for others."""
UNAUTHORIZED = Counter(
    "kappaflow_requests_unauthorized", "Requests refused for their key, by reason.", ["reason"]
)
PROCESSOR_FAILURES = Counter(
    "kappaflow_processor_failures",
    "Records an app's processor or the store failed on (each set aside as a dead letter), "
    "and batches without a record it raised on (each halts its partition for a while).",
    ["group"],
)
BATCH_SECONDS = Histogram(
    "kappaflow_batch_seconds",
    "Time of one worker cycle: read, process and commit.",
    ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

STATE_KEYS = Gauge(
    "kappaflow_state_keys",
    "Keys in a partition's keyed state, as its worker last restored or committed it.",
    ["group", "partition"],
    multiprocess_mode="mostrecent",  # the partition's latest owner's count
)


def forget_state_keys(group: str, partition: int) -> None:
    """This process let go of ``partition``: its count of keys is its new owner's to
    show. (Processes that share their metrics show the latest count of any of them.)"""
    if not os.environ.get(MULTIPROCESS_VARIABLE):
        STATE_KEYS.remove(group, str(partition))


def declare(apps: Sequence[App]) -> None:
    """Give the labelled families their samples for the apps' streams and groups, at 0
    until counted, so that this process's ``/metrics`` shows each of them from start."""
    REQUESTS_REJECTED.labels(UNKNOWN_STREAM, "unknown_stream")
    for app in apps:
        for stream in app.streams:
            EVENTS_INGESTED.labels(stream.name)
            for reason in REJECTION_REASONS:
                REQUESTS_REJECTED.labels(stream.name, reason)
            group = app.group(stream)
            for family in (EVENTS_PROCESSED, PROCESSOR_FAILURES, BATCH_SECONDS):
                family.labels(group)
            for reason in DEAD_LETTER_REASONS:
                DEAD_LETTERS.labels(group, reason)


class LagCollector(Collector):
    """``kappaflow_lag{group, partition}``: records appended but not yet committed."""

    def __init__(self, apps: Sequence[App], log: Log, store: Store) -> None:
        self.apps, self.log, self.store = apps, log, store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "kappaflow_lag",
            "Records not yet processed, per partition.",
            labels=["group", "partition"],
        )
        try:
            for group, partition, value in partition_lag(self.apps, self.log, self.store):
                lag.add_metric([group, str(partition)], value)
        except KappaflowError:
            return
        yield lag


def partition_offsets(
    apps: Sequence[App], log: Log, store: Store, only: Stream | None = None
) -> Iterator[tuple[App, Stream, int, int, int | None]]:
    """(app, stream, partition, end offset in the log, next offset committed by the
    workers, None if none was) of every app stream, or of stream ``only``."""
    for app in apps:
        for stream in app.streams:
            if only is not None and stream.name != only.name:
                continue
            committed = store.committed_offsets(app.group(stream))
            for partition, end in sorted(log.end_offsets(stream.name).items()):
                yield app, stream, partition, end, committed.get(partition)


def partition_lag(
    apps: Sequence[App], log: Log, store: Store, only: Stream | None = None
) -> Iterator[tuple[str, int, int]]:
    """(group, partition, records appended but not committed) of every app stream, or
    of stream ``only``."""
    for app, stream, partition, end, committed in partition_offsets(apps, log, store, only):
        yield app.group(stream), partition, max(0, end - (committed or 0))


def exposition(lag: LagCollector | None) -> bytes:
    """The Prometheus text of this process (or of all processes sharing the directory)."""
    if shared := os.environ.get(MULTIPROCESS_VARIABLE):
        registry = CollectorRegistry()
        SharedMetrics(registry, shared)
    else:
        registry = REGISTRY
    if lag is None:
        return generate_latest(registry)
    combined = CollectorRegistry()
    combined.register(_Both(registry, lag))
    return generate_latest(combined)


class SharedMetrics(MultiProcessCollector):
    """The metrics of the processes sharing ``directory``. A process's file is empty
    while it starts, and stays so if the process was killed between creating it and
    sizing it: it holds no values and is skipped (prometheus_client would fail the
    whole scrape on it)."""

    def __init__(self, registry: CollectorRegistry, directory: str) -> None:
        super().__init__(registry, directory)
        self.directory = Path(directory)

    def collect(self) -> Iterable[Metric]:
        files = [str(path) for path in self.directory.glob("*.db") if _sized(path)]
        return self.merge(files, accumulate=True)


def _sized(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


class _Both(Collector):
    def __init__(self, registry: CollectorRegistry, lag: LagCollector) -> None:
        self.registry, self.lag = registry, lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.registry.collect()
        yield from self.lag.collect()
