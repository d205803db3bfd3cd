"""The scaling policy of docs/autoscaling.md as a pure function: KEDA's Kafka scaler (lag,
activation, zero and one) feeding the HorizontalPodAutoscaler (tolerance,
stabilization, the default clamp or a ``behavior`` block with rate-limit policies).

`decide` takes one observation (time, end offsets, committed offsets), the current
replicas, the settings and the state carried from the previous call, and returns the
desired replicas with the new state. It does no I/O, so the supervisor, the
simulator and the tests all run the same rule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kappaflow.settings import Rules, Scaling, Select


@dataclass(frozen=True)
class PolicyState:
    previous_committed: Mapping[int, int] = field(default_factory=dict)
    last_active_s: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, raw HPA recommendation) within the stabilization windows."""
    changes: tuple[tuple[float, int], ...] = ()
    """(time, replicas added (+) or removed (-)) within the rules' periods."""


@dataclass(frozen=True)
class Lag:
    total: int
    """Lag handed to the HPA: persistent lag excluded, capped as KEDA caps it."""
    uncapped: int
    """Lag the activation compares with ``activation_lag_threshold``."""
    active: bool


@dataclass(frozen=True)
class Decision:
    desired: int
    lag: Lag
    recommendation: int | None
    """The HPA's raw recommendation, before stabilization and limits (None: KEDA decided)."""
    reason: str
    state: PolicyState


def keda_lag(
    end: Mapping[int, int],
    committed: Mapping[int, int],
    previous: Mapping[int, int],
    s: Scaling,
) -> Lag:
    """The Kafka scaler's lag (docs/autoscaling.md, steps 1 to 3)."""
    total = uncapped = with_lag = 0
    for partition, end_offset in end.items():
        offset = committed.get(partition)
        if offset is None:
            invalid = 1 if s.offset_reset_policy == "latest" else end_offset
            lag = 0 if s.scale_to_zero_on_invalid_offset else invalid
            scaling = lag
        else:
            lag = max(0, end_offset - offset)
            persistent = s.exclude_persistent_lag and previous.get(partition) == offset
            scaling = 0 if persistent else lag
        uncapped += lag
        total += scaling
        with_lag += lag > 0
    if not s.allow_idle_consumers:
        bound = with_lag if s.limit_to_partitions_with_lag else len(end)
        if total // s.lag_threshold > bound:
            total = bound * s.lag_threshold
    return Lag(total, uncapped, uncapped > s.activation_lag_threshold)


def hpa_recommendation(total: int, target: int, current: int, tolerance: float) -> int:
    """Replicas for an AverageValue external metric (the HPA's replica calculator)."""
    ratio = total / (target * current)
    if 1 - tolerance <= ratio <= 1 + tolerance:
        return current
    return math.ceil(total / target)


def decide(
    now_s: float,
    end: Mapping[int, int],
    committed: Mapping[int, int],
    current: int,
    s: Scaling,
    state: PolicyState,
) -> Decision:
    lag = keda_lag(end, committed, state.previous_committed, s)
    state = replace(
        state,
        previous_committed=dict(committed),
        last_active_s=now_s if lag.active else state.last_active_s,
    )
    if current == 0:
        if lag.active:
            return _changed(
                now_s, max(s.min_replicas, 1), current, lag, None, "activated", state, s
            )
        return Decision(0, lag, None, "inactive at zero", state)
    if not lag.active and s.min_replicas == 0:
        last = state.last_active_s
        if last is None or now_s - last >= s.cooldown_period_s:
            return _changed(now_s, 0, current, lag, None, "inactive past the cooldown", state, s)
    raw = hpa_recommendation(lag.total, s.lag_threshold, current, s.tolerance)
    horizon = max(s.scale_down_stabilization_s, s.scale_up_stabilization_s)
    history = (*(r for r in state.recommendations if now_s - r[0] < horizon), (now_s, raw))
    state = replace(state, recommendations=history)
    low = max(s.min_replicas, 1)
    if not s.behavior:
        stabilized = max(_within(history, now_s, s.scale_down_stabilization_s))
        desired = min(max(stabilized, low), s.max_replicas, max(2 * current, 4))
        return _changed(now_s, desired, current, lag, raw, "hpa", state, s)
    up_limit = min(_within(history, now_s, s.scale_up_stabilization_s))
    down_limit = max(_within(history, now_s, s.scale_down_stabilization_s))
    stabilized = min(max(current, up_limit), down_limit)
    if stabilized > current:
        limit = _rate_limit(now_s, current, s.scale_up_policies, s.scale_up_select, state, up=True)
        desired = min(stabilized, max(limit, current), s.max_replicas)
    elif stabilized < current:
        limit = _rate_limit(
            now_s, current, s.scale_down_policies, s.scale_down_select, state, up=False
        )
        desired = max(stabilized, min(limit, current), low)
    else:
        desired = current
    desired = min(max(desired, low), s.max_replicas)
    return _changed(now_s, desired, current, lag, raw, "hpa with behavior", state, s)


def _within(history: tuple[tuple[float, int], ...], now_s: float, window_s: float) -> list[int]:
    """Recommendations made after ``now - window`` (the current one always)."""
    return [n for t, n in history if t == now_s or now_s - t < window_s]


def _rate_limit(
    now_s: float,
    current: int,
    rules: Rules,
    select: Select,
    state: PolicyState,
    up: bool,
) -> int:
    """The furthest the rules let replicas move from ``current`` now."""
    if select == "disabled" or not rules:
        return current
    proposals = []
    for rule in rules:
        recent = [change for t, change in state.changes if now_s - t < rule.period_s]
        added = sum(c for c in recent if c > 0)
        removed = -sum(c for c in recent if c < 0)
        start = current - added + removed
        if up:
            value = (
                start + rule.value
                if rule.kind == "pods"
                else math.ceil(start * (1 + rule.value / 100))
            )
        else:
            value = (
                start - rule.value
                if rule.kind == "pods"
                else math.floor(start * (1 - rule.value / 100))
            )
        proposals.append(value)
    # "max" selects the policy allowing the biggest change, in either direction.
    biggest = max if up else min
    return (biggest if select == "max" else (min if up else max))(proposals)


def _changed(
    now_s: float,
    desired: int,
    current: int,
    lag: Lag,
    raw: int | None,
    reason: str,
    state: PolicyState,
    s: Scaling,
) -> Decision:
    if desired != current:
        rules = (*s.scale_up_policies, *s.scale_down_policies)
        horizon = max((r.period_s for r in rules), default=0)
        kept = tuple(c for c in state.changes if now_s - c[0] < horizon)
        state = replace(state, changes=(*kept, (now_s, desired - current)))
    return Decision(desired, lag, raw, reason, state)
