"""The autoscaler of ``kappaflow up`` (and ``kappaflow autoscaler``): every polling
interval, read the log's end offsets and the store's committed offsets, run the
policy, and resize the worker pool. Partitions are shared anew on every change (see
`kappaflow.up.Stack.resize`: workers that stay run on and hand over or take on
partitions; ownership generations fence any worker that did not let go)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter, Gauge

from kappaflow.app import App
from kappaflow.errors import LogUnavailable, StoreUnavailable
from kappaflow.log.base import Log
from kappaflow.metrics import partition_offsets
from kappaflow.scale.policy import PolicyState, decide
from kappaflow.settings import Settings
from kappaflow.store.base import Store

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
    apps: Sequence[App], the_log: Log, store: Store
) -> tuple[dict[int, int], dict[int, int]]:
    """End and committed offsets of every app stream's partitions, numbered in a row; a
    partition without a commit has no committed offset (KEDA's ``offsetResetPolicy``
    decides its lag)."""
    end, committed = {}, {}
    for number, (*_, offset, done) in enumerate(partition_offsets(apps, the_log, store)):
        end[number] = offset
        if done is not None:
            committed[number] = done
    return end, committed


def workers_for(desired: int, partitions: int, allow_idle_consumers: bool) -> int:
    """Never more workers than partitions: an extra one would own nothing."""
    return desired if allow_idle_consumers else min(desired, partitions)


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

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.blind_since: float | None = None
        """When the offsets could last not be read: the pool keeps its size meanwhile."""
        # Every family on /metrics from start, before the first tick has read anything.
        for kind in ("desired", "current"):
            REPLICAS.labels(kind).set(self.pool.size())
        TOTAL_LAG.set(0)
        for direction in ("up", "down"):
            DECISIONS.labels(direction)

    def tick(self) -> None:
        """Read the offsets, decide, resize. While the log or the store cannot be read,
        keep the workers there are (as KEDA keeps the replicas when its scaler fails)."""
        now = time.monotonic() - self.started
        try:
            end, committed = offsets(self.apps, self.log, self.store)
        except (LogUnavailable, StoreUnavailable) as failure:
            if self.blind_since is None:
                self.blind_since = now
                log.warning("cannot read the offsets (%s); keeping %d workers until it can",
                            failure, self.pool.size())  # fmt: skip
            return
        if self.blind_since is not None:
            log.warning("offsets readable again after %.0f s", now - self.blind_since)
            self.blind_since = None
        current = self.pool.size()
        decision = decide(now, end, committed, current, self.settings.scaling, self.state)
        self.state = decision.state
        target = workers_for(decision.desired, self.settings.partitions,
                             self.settings.scaling.allow_idle_consumers)  # fmt: skip
        lag = decision.lag
        REPLICAS.labels("desired").set(target)
        TOTAL_LAG.set(lag.uncapped)
        if target != current:
            direction = "up" if target > current else "down"
            DECISIONS.labels(direction).inc()
            log.warning(
                "scale %s: %d -> %d workers; lag %d (to the policy %d, %s), threshold %d, "
                "recommendation %s, %s",
                direction, current, target, lag.uncapped, lag.total,
                "active" if lag.active else "inactive", self.settings.scaling.lag_threshold,
                decision.recommendation, decision.reason,
            )  # fmt: skip
            self.pool.resize(target)
        REPLICAS.labels("current").set(self.pool.size())
        self.history.append((now, self.pool.size(), lag.uncapped))
