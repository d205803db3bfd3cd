"""The autoscaler of ``kappaflow up`` (and ``kappaflow autoscaler``): every polling
interval, read the log's end offsets and the store's committed offsets, run the
policy, and resize the worker pool. Partitions are shared anew on every change (see
`kappaflow.up.Stack.resize`: workers that stay run on and hand over or take on
partitions; ownership generations fence any worker that did not let go)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from msgspec.structs import replace
from prometheus_client import Counter, Gauge

from kappaflow.app import App
from kappaflow.errors import LogUnavailable, SettingsError, StoreUnavailable
from kappaflow.log.base import Log
from kappaflow.metrics import partition_offsets
from kappaflow.scale.policy import (
    LAG_UNKNOWN,
    Offsets,
    PolicyState,
    decide,
    pool_lag,
    validate,
)
from kappaflow.settings import Scaling, Settings
from kappaflow.store.base import ScaleDecision, ScalingState, Store

log = logging.getLogger("kappaflow.autoscaler")

REPLICAS = Gauge("kappaflow_replicas", "Workers: desired and current.", ["kind"],
                 multiprocess_mode="mostrecent")  # fmt: skip
TOTAL_LAG = Gauge("kappaflow_total_lag", "Records not yet processed, all streams.",
                  multiprocess_mode="mostrecent")  # fmt: skip
DECISIONS = Counter("kappaflow_scale_decisions", "Scaling decisions by direction.", ["direction"])


class Pool(Protocol):
    def size(self) -> int: ...

    def resize(self, workers: int) -> None: ...


def offsets(
    apps: Sequence[App], the_log: Log, store: Store, topics: Sequence[str] = ()
) -> dict[str, Offsets]:
    """Consumer group -> the end and committed offsets of its stream's partitions (a KEDA
    trigger each), of the streams ``topics`` names (none: every one); a partition without
    a commit has no committed offset (KEDA's ``offsetResetPolicy`` decides its lag)."""
    found: dict[str, Offsets] = {}
    for app, stream, partition, end, done in partition_offsets(apps, the_log, store):
        if topics and stream.name not in topics:
            continue
        ends, committed = found.setdefault(app.group(stream), ({}, {}))
        ends[partition] = end  # type: ignore[index]  # built here, read-only after
        if done is not None:
            committed[partition] = done  # type: ignore[index]
    return found


def workers_for(desired: int, partitions: int, allow_idle_consumers: bool) -> int:
    """Never more workers than partitions: an extra one would own nothing."""
    return desired if allow_idle_consumers else min(desired, partitions)


def pool_policy(settings: Settings, streams: Collection[str]) -> Scaling:
    """The settings' policy for a pool of workers that read ``streams`` (every app
    stream's name), its bounds as the pool can run them (`workers_for`), as the
    ScaledObject bounds them; `SettingsError` for settings KEDA would refuse, or
    ``topics`` naming no stream."""
    s = settings.scaling
    validate(s)
    unknown = sorted(set(s.topics) - set(streams))
    if unknown:
        raise SettingsError(f"KAPPAFLOW_TOPICS names no stream of the apps: {', '.join(unknown)} "
                            f"(they have {', '.join(sorted(streams))})")  # fmt: skip
    bound = partial(workers_for, partitions=settings.partitions,
                    allow_idle_consumers=s.allow_idle_consumers)  # fmt: skip
    return replace(s, min_replicas=bound(s.min_replicas), max_replicas=bound(s.max_replicas))


@dataclass
class Autoscaler:
    settings: Settings
    apps: Sequence[App]
    log: Log
    store: Store
    pool: Pool
    state: PolicyState = field(default_factory=PolicyState)
    history: list[tuple[float, int, int]] = field(default_factory=list)
    """(time, workers, total lag) after each tick."""
    pool_name: str = "live"
    """``live`` (the apps' live versions), or the app version the pool runs
    (``video@2``), which starts its log lines."""
    exported: bool = True
    """Show its decisions on /metrics: the live versions' autoscaler does."""

    def __post_init__(self) -> None:
        streams = [stream.name for app in self.apps for stream in app.streams]
        self.policy = pool_policy(self.settings, streams)
        self.started = time.monotonic()
        self.blind_since: float | None = None
        """When the offsets could last not be read: the pool keeps its size meanwhile."""
        self.paused: int | None = None
        """The replicas ``kappaflow scale pause`` holds the pool at, as last read."""
        self.unrecorded = False
        """Whether the store refused the last decision (said once in the log)."""
        if not self.exported:
            return
        # Every family on /metrics from start, before the first tick has read anything.
        for kind in ("desired", "current"):
            REPLICAS.labels(kind).set(self.pool.size())
        TOTAL_LAG.set(0)
        for direction in ("up", "down"):
            DECISIONS.labels(direction)

    def tick(self) -> None:
        """Read the pause and the offsets, decide, resize, and record it in the store (for
        the dashboard). While the pool is paused, hold it at the paused replicas (as KEDA
        stops its loop: the policy starts afresh after). While the log or the store
        cannot be read, keep the workers there are (as the HPA keeps the replicas when
        KEDA's scaler fails), or with a fallback set, let it act."""
        now = time.monotonic() - self.started
        policy = self.policy
        read: dict[str, Offsets] | None
        was_paused = self.paused
        try:
            paused = {state.pool: state.paused for state in self.store.scaling()}
            stored = paused.get(self.pool_name)
            self.paused = policy.paused_replicas if stored is None else stored
            read = offsets(self.apps, self.log, self.store, policy.topics)
        except (LogUnavailable, StoreUnavailable) as failure:
            read = None
            if self.blind_since is None:
                self.blind_since = now
                log.warning("cannot read the offsets (%s); %s", failure,
                            "the fallback acts after "
                            f"{policy.fallback_failure_threshold} polls in a row"
                            if policy.fallback_replicas else
                            f"keeping {self.pool.size()} workers until it can")  # fmt: skip
        if read is not None and self.blind_since is not None:
            log.warning("offsets readable again after %.0f s", now - self.blind_since)
            self.blind_since = None
        if was_paused is not None and self.paused is None:
            self.state = PolicyState()
        current = self.pool.size()
        if self.paused is not None:
            if read is None:
                return
            lag, target, reason = pool_lag(read, {}, policy), self.paused, "paused"
        else:
            decision = decide(now, read, current, policy, self.state)
            self.state, lag = decision.state, decision.lag
            if decision.reason == LAG_UNKNOWN:
                return  # what the pool and the dashboard showed last still holds
            target, reason = decision.desired, decision.reason
            if decision.recommendation is not None:
                reason = f"recommendation {decision.recommendation}, {reason}"
        if self.exported:
            REPLICAS.labels("desired").set(target)
            TOTAL_LAG.set(lag.uncapped)
        change = None
        if target != current:
            direction = "up" if target > current else "down"
            if self.exported:
                DECISIONS.labels(direction).inc()
            prefix = "" if self.pool_name == "live" else f"{self.pool_name}: "
            log.warning(
                "%sscale %s: %d -> %d workers; lag %d (to the policy %d, %s), threshold %d, %s",
                prefix, direction, current, target, lag.uncapped, lag.total,
                "active" if lag.active else "inactive", policy.lag_threshold, reason,
            )  # fmt: skip
            self.pool.resize(target)
            change = ScaleDecision(self.pool_name, time.time(), current, target, lag.uncapped,
                                   reason)  # fmt: skip
        if self.exported:
            REPLICAS.labels("current").set(self.pool.size())
        self.history.append((now, self.pool.size(), lag.uncapped))
        self._record(ScalingState(self.pool_name, self.pool.size(), target, lag.uncapped,
                                  lag.total, policy.lag_threshold, lag.active, time.time()),
                     change)  # fmt: skip

    def _record(self, state: ScalingState, change: ScaleDecision | None) -> None:
        """Keep the pool's state and its change in the store; while it cannot, scale on."""
        try:
            self.store.record_scaling(state, change)
        except StoreUnavailable as failure:
            if not self.unrecorded:
                log.warning("cannot record the autoscaler's decisions (%s); scaling on", failure)
            self.unrecorded = True
            return
        self.unrecorded = False
