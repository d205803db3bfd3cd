"""The dashboard: ``GET /`` is an HTML page, with its script and style sheet
(``/dashboard.js``, ``/dashboard.css``; nothing inline, nothing from elsewhere, as its
Content-Security-Policy says), that polls ``GET /status`` and shows, per app stream,
the events appended and processed, their rates, the dead letters by reason (in a
warning colour while they grow), the lag of each partition and its recent history, the
worker that owns it, the partitions an app's processor halted, the autoscalers' pools
and last decisions, and the read queries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib.resources import files

import msgspec

from kappaflow.app import App
from kappaflow.deployments import live
from kappaflow.log.base import Log
from kappaflow.metrics import partition_offsets
from kappaflow.query.service import served_queries
from kappaflow.store.base import AppVersion, Halted, ScaleDecision, ScalingState, Store

PAGE = {
    f"/{name}": (kind, files("kappaflow.query").joinpath(f"dashboard.{suffix}").read_bytes())
    for name, suffix, kind in [
        ("", "html", "text/html; charset=utf-8"),
        ("dashboard.js", "js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "css", "text/css; charset=utf-8"),
    ]
}
"""Path -> (media type, body) of the page and what it loads."""
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
"""The security headers of the page and what it loads: only its own script, style sheet
and ``/status``; never in a frame; no referrer sent on."""


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
    version: int
    """The app version reading the stream in ``group`` (`kappaflow.deployments`)."""
    version_status: str
    """``live`` (it serves the app's queries) or ``deployed`` (beside the live one)."""
    started: str
    """Where the version's workers started in the log."""
    catch_up_s: float | None
    """Seconds until ``lag`` is 0 at the pace it shrank over the last `PACE_S`: 0 at 0,
    None while it does not shrink or is not measured yet."""
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


class Autoscaling(msgspec.Struct):
    pools: list[ScalingState]
    """Each autoscaler's pool as it last decided: current and desired workers, the lag
    against the threshold, and the replicas it is paused at (null if not)."""
    decisions: list[ScaleDecision]
    """Their last changes of the workers, the newest first, with why."""


class Status(msgspec.Struct):
    streams: list[StreamStatus]
    queries: list[QueryInfo]
    autoscaling: Autoscaling
    """Empty where kappaflow's autoscaler does not run (KEDA scales a cluster's)."""


class Pace:
    """Lags over the last `PACE_S`, each by name (a group, an app version), to say when
    each catches up."""

    def __init__(self) -> None:
        self._seen: dict[str, list[tuple[float, int]]] = {}

    def catch_up_s(self, group: str, lag: int, now: float) -> float | None:
        """Seconds until ``lag`` is 0 at the pace it shrank since the oldest lag seen
        within `PACE_S` (and noted now)."""
        seen = [(t, n) for t, n in self._seen.get(group, []) if now - t <= PACE_S]
        self._seen[group] = [*seen, (now, lag)]
        if lag == 0:
            return 0.0
        if not seen or now - seen[0][0] <= 0:
            return None
        shrinking = (seen[0][1] - lag) / (now - seen[0][0])
        return lag / shrinking if shrinking > 0 else None


PACE_S = 30.0


def status(apps: Sequence[App], log: Log, store: Store, pace: Pace | None = None) -> Status:
    """Where every app version's streams stand now (with ``pace``, the one that noted
    their earlier lags: when each catches up); raises `KappaflowError` when the log or
    the store cannot say."""
    versions = store.app_versions()
    recorded = {(v.app, v.version): v for v in versions}
    offsets: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for app, stream, partition, end, committed in partition_offsets(apps, log, store):
        offsets.setdefault((app.ref, stream.name), []).append((partition, end, committed or 0))
    by_ref = {app.ref: app for app in apps}
    streams = []
    for (ref, stream), found in offsets.items():
        app = by_ref[ref]
        version = recorded.get((app.name, app.version))
        stands = _stream_status(store, app, stream, found, version)
        if pace is not None:
            stands.catch_up_s = pace.catch_up_s(stands.group, stands.lag, time.monotonic())
        streams.append(stands)
    served = served_queries(live(apps, store, versions))
    queries = [QueryInfo(owner, q.path, q.summary) for owner, q in served]
    return Status(streams, queries, Autoscaling(store.scaling(), store.scale_decisions()))


def _stream_status(
    store: Store,
    app: App,
    stream: str,
    offsets: list[tuple[int, int, int]],
    version: AppVersion | None,
) -> StreamStatus:
    """A stream's status from its partitions' (partition, end, committed) offsets."""
    group = app.group(app.stream(stream))
    owners, halts, dead = store.owners(group), store.halts(group), store.dead_letter_counts(group)
    parts = [
        PartitionStatus(partition, end, committed, max(0, end - committed),
                        owners.get(partition), halts.get(partition))
        for partition, end, committed in offsets
    ]  # fmt: skip
    lag = sum(p.lag for p in parts)
    return StreamStatus(app.name, stream, group, app.version,
                        "live" if version is None else version.status,
                        "" if version is None else version.note, 0.0 if lag == 0 else None,
                        sum(p.appended for p in parts), sum(p.processed for p in parts), lag,
                        sum(dead.values()), dead,
                        len({p.worker for p in parts if p.worker is not None}), parts)  # fmt: skip
