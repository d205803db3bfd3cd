"""The scaling policy of docs/autoscaling.md as pure functions, one a stage, each as
KEDA or the HorizontalPodAutoscaler carries it out (the Go function it follows is
named in its docstring; tests/scale/test_upstream.py holds each to the cases of the
Go tests):

1. lag: `partition_lag`, `keda_lag` (with `parse_partition_limitation`, `next_factor`)
   and `capped_lag`: KEDA's Kafka scaler, one trigger a stream; `pool_lag`, all of them;
2. activation and zero/one: `keda_replicas`, KEDA's executor (with `fallback_replicas`
   when the lag cannot be read);
3. the HPA, `hpa_replicas`: `hpa_recommendation`, `out_of_bounds`, `stabilize` or
   `stabilize_with_behavior`, then `clamp` or `rate_limit` (with `store_scale_event`).

`decide` runs them on one observation (the end and committed offsets of each stream),
the current replicas, the settings and the state carried from its previous call. It
does no I/O, so the autoscaler, the simulator and the tests run the same rule.
Durations are seconds; ``now_s`` only grows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kappaflow.errors import SettingsError
from kappaflow.settings import Rules, Scaling, Select

Offsets = tuple[Mapping[int, int], Mapping[int, int]]
"""(end offset, committed offset) of a stream's partitions; a partition with no commit
is missing from the second."""
LAG_UNKNOWN = "lag unknown"
"""The reason of a decision that kept the replicas because the lag could not be read."""
Timed = tuple[tuple[float, int], ...]
"""(time, replicas) entries: recommendations, or scale events (replicas changed)."""


@dataclass(frozen=True)
class PolicyState:
    started_s: float | None = None
    """When the autoscaler first decided (KEDA's creation time, for the initial cooldown)."""
    previous_committed: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    """Each stream's committed offsets at the previous poll (persistent lag)."""
    last_active_s: float | None = None
    recommendations: Timed | None = None
    """The HPA's recommendations, outdated ones included until their slot is reused;
    None until the first, which is the current replicas (``recordInitialRecommendation``)."""
    scale_up_events: Timed = ()
    scale_down_events: Timed = ()
    failures: int = 0
    """Polls in a row that could not read the lag."""


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
    """The HPA's raw recommendation, before stabilization and limits (None: it did not
    compute one)."""
    reason: str
    state: PolicyState


def validate(s: Scaling, topic: str | None = "stream") -> None:
    """KEDA's checks of a Kafka trigger (``kafkaMetadata.Validate``), ``topic`` None for a
    trigger of every topic of its group; `SettingsError` naming the setting."""
    if s.allow_idle_consumers and s.limit_to_partitions_with_lag:
        raise SettingsError(
            "KAPPAFLOW_ALLOW_IDLE_CONSUMERS and KAPPAFLOW_LIMIT_TO_PARTITIONS_WITH_LAG cannot "
            "both be true"
        )
    if topic is None and s.limit_to_partitions_with_lag:
        raise SettingsError("KAPPAFLOW_LIMIT_TO_PARTITIONS_WITH_LAG needs a topic")
    if s.limit_to_partitions_with_lag and s.ensure_even_distribution_of_partitions:
        raise SettingsError("KAPPAFLOW_LIMIT_TO_PARTITIONS_WITH_LAG and "
                            "KAPPAFLOW_ENSURE_EVEN_DISTRIBUTION_OF_PARTITIONS cannot both be "
                            "true")  # fmt: skip
    if topic is None and s.ensure_even_distribution_of_partitions:
        raise SettingsError("KAPPAFLOW_ENSURE_EVEN_DISTRIBUTION_OF_PARTITIONS needs a topic")
    parse_partition_limitation(s.partition_limitation)
    if s.idle_replica_count is not None and s.idle_replica_count >= s.min_replicas:
        raise SettingsError(f"KAPPAFLOW_IDLE_REPLICA_COUNT ({s.idle_replica_count}) must be "
                            f"less than KAPPAFLOW_MIN_REPLICAS ({s.min_replicas})")  # fmt: skip
    if s.min_replicas > s.max_replicas:
        raise SettingsError(f"KAPPAFLOW_MIN_REPLICAS ({s.min_replicas}) must not be more "
                            f"than KAPPAFLOW_MAX_REPLICAS ({s.max_replicas})")  # fmt: skip


def parse_partition_limitation(text: str) -> tuple[int, ...] | None:
    """The partitions ``1,2,10-20`` names, in its order (``parsePartitionLimitation``);
    None (every partition) for a blank text; `SettingsError` for another."""
    if not text.strip():
        return None
    found: list[int] = []
    for part in (part.strip() for part in text.split(",")):
        bounds = [bound.strip() for bound in part.split("-")]
        try:
            if len(bounds) == 1:
                found.append(int(part))
            elif len(bounds) == 2:
                found.extend(range(int(bounds[0]), int(bounds[1]) + 1))
            else:
                raise ValueError(part)
        except ValueError:
            raise SettingsError(
                f"KAPPAFLOW_PARTITION_LIMITATION: {part!r} in {text!r} is not a partition "
                "nor a range of them (1,2,10-20)"
            ) from None
    return tuple(found)


def factors(n: int) -> list[int]:
    """The divisors of ``n``, ascending (``FindFactors``)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0] if n >= 1 else []
    return sorted({*small, *(n // d for d in small)})


def next_factor(lag: int, partitions: int, threshold: int) -> int:
    """The fewest consumers that share the partitions evenly and take ``lag`` at
    ``threshold`` each (``getNextFactorThatBalancesConsumersToTopicPartitions``)."""
    return next((f for f in factors(partitions) if f * threshold >= lag), partitions)


def partition_lag(
    end: int | None, committed: int | None, previous: int | None, s: Scaling
) -> tuple[int, int]:
    """(lag counted for scaling, lag counted for activation) of one partition
    (``getLagForPartition``): ``end`` None if the log does not know the partition,
    ``committed`` None if nothing is committed, ``previous`` the committed offset at the
    previous poll."""
    invalid = committed is None
    if invalid and (s.scale_to_zero_on_invalid_offset or s.offset_reset_policy == "latest"):
        lag = 0 if s.scale_to_zero_on_invalid_offset else 1
        return lag, lag
    if end is None:
        return 0, 0
    if committed is None:
        return end, end
    lag = max(0, end - committed)
    if s.exclude_persistent_lag and previous == committed:
        return 0, lag
    return lag, lag


def capped_lag(total: int, partitions: int, with_lag: int, s: Scaling) -> int:
    """The total lag a trigger reports (``getTotalLag``): evened out to the next factor of
    the partitions, and at most (partitions, or partitions with lag) x the threshold
    once its quotient by the threshold exceeds them."""
    even, limit = s.ensure_even_distribution_of_partitions, s.limit_to_partitions_with_lag
    if s.allow_idle_consumers and not limit and not even:
        return total
    threshold = s.lag_threshold
    if even:
        total = next_factor(total, partitions, threshold) * threshold
    bound = with_lag if limit else partitions
    return bound * threshold if total // threshold > bound else total


def keda_lag(
    end: Mapping[int, int],
    committed: Mapping[int, int],
    previous: Mapping[int, int],
    s: Scaling,
) -> Lag:
    """One trigger's lag (a stream's partitions, those of ``partition_limitation``
    only), and whether it is active (steps 1 to 3 of docs/autoscaling.md)."""
    limitation = parse_partition_limitation(s.partition_limitation)
    counted = [p for p in end if limitation is None or p in limitation]
    total = uncapped = with_lag = 0
    for partition in counted:
        lag, full = partition_lag(end[partition], committed.get(partition),
                                  previous.get(partition), s)  # fmt: skip
        total, uncapped, with_lag = total + lag, uncapped + full, with_lag + (lag > 0)
    total = capped_lag(total, len(counted), with_lag, s)
    return Lag(total, uncapped, uncapped > s.activation_lag_threshold)


def pool_lag(
    offsets: Mapping[str, Offsets], previous: Mapping[str, Mapping[int, int]], s: Scaling
) -> Lag:
    """Every stream's trigger (`keda_lag`, ``previous`` the committed offsets of each
    stream at the previous poll) as one metric: their lags added up, since a worker
    processes every stream (the ScaledObject's ``scalingModifiers`` formula), and active
    while that sum is over ``activation_lag_threshold`` (KEDA's ``activationTarget`` of a
    formula, in ``getScaledObjectState``)."""
    lags = [keda_lag(end, committed, previous.get(topic, {}), s)
            for topic, (end, committed) in offsets.items()]  # fmt: skip
    total, uncapped = sum(lag.total for lag in lags), sum(lag.uncapped for lag in lags)
    return Lag(total, uncapped, total > s.activation_lag_threshold)


def fallback_replicas(current: int, s: Scaling) -> int:
    """The replicas KEDA's fallback stands for while the lag cannot be read (``doFallback``);
    the metric it reports is these x the threshold."""
    wanted = s.fallback_replicas
    return {
        "static": wanted,
        "currentReplicas": current,
        "currentReplicasIfHigher": max(current, wanted),
        "currentReplicasIfLower": min(current, wanted),
    }[s.fallback_behavior]


def keda_replicas(
    now_s: float, current: int, active: bool, s: Scaling, state: PolicyState
) -> tuple[int, str] | None:
    """What KEDA's executor scales to (``RequestScale``), and why; None where it leaves
    the replicas to the HPA: from zero (or idle) to ``min_replicas`` (at least 1) once
    active; when inactive, to ``idle_replica_count`` (or ``min_replicas``) once the
    cooldown since the last activity is over (the initial cooldown since it started,
    when never active), and below ``min_replicas`` straight to it."""
    low, idle = s.min_replicas, s.idle_replica_count
    if active:
        if (idle is not None and current < low) or current == 0:
            return max(low, 1), "activated"
        return None
    if (idle is not None and current > idle) or (current > 0 and low == 0):
        if state.last_active_s is None:
            started = now_s if state.started_s is None else state.started_s
            since, cooldown = started, s.initial_cooldown_period_s
        else:
            since, cooldown = state.last_active_s, s.cooldown_period_s
        if since + cooldown < now_s:
            return (low if idle is None else idle), "inactive past the cooldown"
        return None
    if idle is None and current < low:
        return low, "below min_replicas"
    return None


def hpa_recommendation(total: int, target: int, current: int, tolerance: float) -> int:
    """Replicas for an AverageValue external metric (the replica calculator)."""
    if current > 0 and abs(1 - total / (target * current)) <= tolerance:
        return current
    return math.ceil(total / target)


def hpa_bounds(s: Scaling) -> tuple[int, int]:
    """The HPA's [minReplicas, maxReplicas] as KEDA renders them (min at least 1)."""
    return max(s.min_replicas, 1), s.max_replicas


def out_of_bounds(current: int, low: int, high: int) -> int | None:
    """The bound replicas outside [``low``, ``high``] go to at once, before any metric
    is read (``reconcileAutoscaler``); None within them."""
    if current > high:
        return high
    if current < low:
        return low
    return None


def _store(entries: Timed, now_s: float, value: int, outdated_before: float) -> Timed:
    """``entries`` with (now, value) in the slot of the last one older than
    ``outdated_before``, or added: the HPA reuses one outdated slot and keeps the others."""
    reused = [i for i, (t, _) in enumerate(entries) if t < outdated_before]
    if not reused:
        return (*entries, (now_s, value))
    return tuple((now_s, value) if i == reused[-1] else e for i, e in enumerate(entries))


def stabilize(history: Timed, now_s: float, raw: int, window_s: float) -> tuple[int, Timed]:
    """The highest of ``raw`` and the recommendations of the last ``window_s``, and the
    history with ``raw`` stored (``stabilizeRecommendation``: no ``behavior``)."""
    cutoff = now_s - window_s
    highest = max([raw, *(n for t, n in history if not t < cutoff)])
    return highest, _store(history, now_s, raw, cutoff)


def stabilize_with_behavior(
    history: Timed, now_s: float, raw: int, current: int, up_window_s: float, down_window_s: float
) -> tuple[int, Timed]:
    """``current`` moved up to the lowest recommendation of the scale-up window and down
    to the highest of the scale-down window, ``raw`` included, and the history with
    ``raw`` stored (``stabilizeRecommendationWithBehaviors``)."""
    up_cutoff, down_cutoff = now_s - up_window_s, now_s - down_window_s
    up = min([raw, *(n for t, n in history if t > up_cutoff)])
    down = max([raw, *(n for t, n in history if t > down_cutoff)])
    return min(max(current, up), down), _store(history, now_s, raw, min(up_cutoff, down_cutoff))


def scale_up_limit(current: int, s: Scaling) -> int:
    """The most replicas the HPA goes to from ``current`` without ``behavior``
    (``calculateScaleUpLimit``)."""
    return int(max(s.scale_up_limit_factor * current, s.scale_up_limit_minimum))


def clamp(current: int, desired: int, low: int, high: int, s: Scaling) -> int:
    """``desired`` within [``low``, ``high``] and the scale-up limit
    (``convertDesiredReplicasWithRules``: no ``behavior``)."""
    limit = scale_up_limit(current, s)
    allowed = limit if high > limit else high
    if desired < low:
        return low
    return min(desired, allowed)


def replicas_changed(events: Timed, now_s: float, period_s: float) -> int:
    """Replicas added (or removed) by the events within the last ``period_s``
    (``getReplicasChangePerPeriod``)."""
    return sum(change for t, change in events if t > now_s - period_s)


def rule_limit(
    current: int, up: Timed, down: Timed, now_s: float, rules: Rules, select: Select, rising: bool
) -> int:
    """The furthest the rules let replicas go from ``current``, up if ``rising`` else
    down (``calculateScaleUpLimitWithScalingRules``, ``calculateScaleDownLimitWithBehaviors``):
    each rule from the replicas at the start of its period, ``select`` picking the rule
    allowing the biggest change (``max``) or the smallest (``min``)."""
    if select == "disabled" or not rules:
        return current
    limits = []
    for rule in rules:
        start = (
            current
            - replicas_changed(up, now_s, rule.period_s)
            + replicas_changed(down, now_s, rule.period_s)
        )
        if rising:
            limits.append(start + rule.value if rule.kind == "pods"
                          else math.ceil(start * (1 + rule.value / 100)))  # fmt: skip
        else:
            limits.append(start - rule.value if rule.kind == "pods"
                          else int(start * (1 - rule.value / 100)))  # fmt: skip
    biggest = (select == "max") == rising
    return max(limits) if biggest else min(limits)


def rate_limit(
    current: int, desired: int, low: int, high: int, up: Timed, down: Timed, now_s: float,
    s: Scaling,
) -> int:  # fmt: skip
    """``desired`` within the ``behavior`` rules' limits and [``low``, ``high``]
    (``convertDesiredReplicasWithBehaviorRate``); ``up`` and ``down``: the scale events."""
    if desired > current:
        limit = max(current, rule_limit(current, up, down, now_s, s.scale_up_policies,
                                        s.scale_up_select, rising=True))  # fmt: skip
        return min(desired, limit if high > limit else high)
    if desired < current:
        limit = min(current, rule_limit(current, up, down, now_s, s.scale_down_policies,
                                        s.scale_down_select, rising=False))  # fmt: skip
        return max(desired, limit if low < limit else low)
    return desired


def store_scale_event(events: Timed, now_s: float, change: int, rules: Rules) -> Timed:
    """``events`` with a change of ``change`` replicas now, in the slot of the last one
    older than the rules' longest period (``storeScaleEvent``)."""
    longest = max((rule.period_s for rule in rules), default=0)
    return _store(events, now_s, change, now_s - longest)


def decide(
    now_s: float,
    offsets: Mapping[str, Offsets] | None,
    current: int,
    s: Scaling,
    state: PolicyState,
) -> Decision:
    """The replicas for ``offsets`` (each stream's; None if they could not be read) and
    ``current`` replicas, and the state to pass to the next call."""
    state = replace(state, started_s=now_s if state.started_s is None else state.started_s)
    if state.recommendations is None:
        state = replace(state, recommendations=((now_s, current),))
    if offsets is None:
        return _unread(now_s, current, s, replace(state, failures=state.failures + 1))
    lag = pool_lag(offsets, state.previous_committed, s)
    state = replace(
        state,
        failures=0,
        previous_committed={topic: dict(committed) for topic, (_, committed) in offsets.items()},
        last_active_s=now_s if lag.active else state.last_active_s,
    )
    keda = keda_replicas(now_s, current, lag.active, s, state)
    if keda is not None:  # not the HPA's change: no scale event of its own
        return Decision(keda[0], lag, None, keda[1], state)
    return hpa_replicas(now_s, lag, current, s, state)


def _unread(now_s: float, current: int, s: Scaling, state: PolicyState) -> Decision:
    """Without a lag: the replicas stay (KEDA reports an error, the HPA keeps them) until
    ``fallback_failure_threshold`` polls in a row have failed, if a fallback is set;
    then the HPA scales on the fallback's metric."""
    none = Lag(0, 0, False)
    if s.fallback_replicas == 0 or state.failures <= s.fallback_failure_threshold:
        return Decision(current, none, None, LAG_UNKNOWN, state)
    total = fallback_replicas(current, s) * s.lag_threshold
    return hpa_replicas(now_s, Lag(total, total, True), current, s, state, "fallback")


def hpa_replicas(
    now_s: float, lag: Lag, current: int, s: Scaling, state: PolicyState, why: str = "hpa"
) -> Decision:
    """The HorizontalPodAutoscaler's decision on ``lag`` (``reconcileAutoscaler``): none at
    zero, the bound outside [min, max], else its recommendation stabilized and clamped
    or rate-limited."""
    low, high = hpa_bounds(s)
    if current == 0:  # scaling disabled: from zero is KEDA's
        return Decision(0, lag, None, "inactive at zero", state)
    bound = out_of_bounds(current, low, high)
    if bound is not None:
        return _changed(now_s, bound, current, lag, None, f"{why}: out of bounds", state, s)
    raw = hpa_recommendation(lag.total, s.lag_threshold, current, s.tolerance)
    history = state.recommendations or ()
    if not s.behavior:
        stabilized, history = stabilize(history, now_s, raw, s.scale_down_stabilization_s)
        desired = clamp(current, stabilized, low, high, s)
    else:
        stabilized, history = stabilize_with_behavior(
            history, now_s, raw, current, s.scale_up_stabilization_s, s.scale_down_stabilization_s
        )
        desired = rate_limit(current, stabilized, low, high, state.scale_up_events,
                             state.scale_down_events, now_s, s)  # fmt: skip
        why += " with behavior"
    state = replace(state, recommendations=history)
    return _changed(now_s, desired, current, lag, raw, why, state, s)


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
    """The decision, its scale event stored if ``behavior`` is set (the HPA stores
    none without)."""
    if s.behavior and desired > current:
        events = store_scale_event(state.scale_up_events, now_s, desired - current,
                                   s.scale_up_policies)  # fmt: skip
        state = replace(state, scale_up_events=events)
    elif s.behavior and desired < current:
        events = store_scale_event(state.scale_down_events, now_s, current - desired,
                                   s.scale_down_policies)  # fmt: skip
        state = replace(state, scale_down_events=events)
    return Decision(desired, lag, raw, reason, state)
