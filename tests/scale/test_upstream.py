"""Each stage of the policy against the cases of the Go tests of the code it follows,
translated by hand (the upstream test function in each test's name or docstring):
Kubernetes' ``pkg/controller/podautoscaler/horizontal_test.go`` and KEDA's
``pkg/scalers/kafka_scaler_test.go``, ``pkg/scaling/executor/scale_scaledobjects_test.go``,
``pkg/fallback/fallback_test.go`` and ``apis/keda/v1alpha1/scaledobject_types_test.go``.
Times are seconds; an entry "n s ago" is at ``NOW - n``."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from kappaflow.errors import SettingsError
from kappaflow.scale.policy import (
    Lag,
    PolicyState,
    capped_lag,
    clamp,
    decide,
    factors,
    fallback_replicas,
    hpa_replicas,
    keda_lag,
    keda_replicas,
    next_factor,
    out_of_bounds,
    parse_partition_limitation,
    partition_lag,
    rate_limit,
    replicas_changed,
    rule_limit,
    stabilize,
    stabilize_with_behavior,
    store_scale_event,
    validate,
)
from kappaflow.settings import Rule, Scaling, Settings

NOW = 10_000.0
MIN = 60
DEFAULT = Scaling(lag_threshold=100)


def ago(*entries: tuple[int, float]) -> tuple[tuple[float, int], ...]:
    """(value, seconds ago) entries as the policy keeps them: (time, value)."""
    return tuple((NOW - seconds, value) for value, seconds in entries)


def values(entries: tuple[tuple[float, int], ...]) -> list[int]:
    return [value for _, value in entries]


# horizontal_test.go: reconcileAutoscaler's bounds, before any metric


@pytest.mark.parametrize(
    ("upstream", "low", "high", "current", "expected"),
    [
        ("TestTooFewReplicas", 3, 5, 2, 3),
        ("TestTooManyReplicas", 3, 5, 10, 5),
        ("TestScaleUpRCImmediately", 2, 6, 1, 2),
        ("TestScaleDownRCImmediately", 2, 5, 6, 5),
        ("TestMinReplicas (within: the metrics decide)", 2, 5, 3, None),
    ],
)
def test_replicas_out_of_bounds_go_to_the_bound_at_once(upstream, low, high, current, expected):
    assert out_of_bounds(current, low, high) == expected, upstream


@pytest.mark.parametrize(
    ("current", "min_replicas", "max_replicas", "lag", "expected"),
    [
        (1, 5, 10, 100_000, 5),  # the HPA's clamp would say 4 (twice 1, at least 4)
        (10, 1, 5, 0, 5),  # not 3: no stabilization or limit applies first
        (2, 3, 10, 1_000_000, 3),  # not 4
    ],
)
def test_decide_goes_to_the_bound_before_reading_the_lag(
    current, min_replicas, max_replicas, lag, expected
):
    """The issue's cases, through the whole policy (TestTooFewReplicas, TestTooManyReplicas)."""
    s = replace(DEFAULT, min_replicas=min_replicas, max_replicas=max_replicas)
    end, committed = {0: 1000 + lag}, {0: 1000}
    decision = decide(NOW, {"g": (end, committed)}, current, s, PolicyState())
    assert (decision.desired, decision.recommendation) == (expected, None)


def test_at_zero_replicas_the_hpa_does_not_scale() -> None:
    """TestZeroReplicas: min 3, max 5, 0 replicas: scaling is disabled (KEDA's to act)."""
    s = replace(DEFAULT, min_replicas=3, max_replicas=5)
    decision = hpa_replicas(NOW, Lag(10_000, 10_000, True), 0, s, PolicyState())
    assert decision.desired == 0 and decision.recommendation is None


# horizontal_test.go: recordInitialRecommendation, stabilizeRecommendation(WithBehaviors)


def test_a_new_autoscaler_holds_the_current_replicas_for_the_stabilization_window() -> None:
    """recordInitialRecommendation: at 5 replicas with low lag, 5 until the window ends."""
    low = {"g": ({0: 1050}, {0: 1000})}
    first = decide(NOW, low, 5, DEFAULT, PolicyState())
    assert first.desired == 5 and first.state.recommendations == ((NOW, 5), (NOW, 1))
    held = decide(NOW + 300, low, 5, DEFAULT, first.state)
    assert held.desired == 5  # the 5 at the window's start still counts
    assert decide(NOW + 301, low, 5, DEFAULT, held.state).desired == 1


@pytest.mark.parametrize(
    ("case", "history", "raw", "expected", "stored"),
    [
        ("empty log", (), 5, 5, [5]),
        ("stabilize", ((4, 2 * MIN), (5, MIN)), 3, 5, [4, 5, 3]),
        ("no stabilize", ((1, 2 * MIN), (2, MIN)), 3, 3, [1, 2, 3]),
        ("no stabilize - old recommendations", ((10, 10 * MIN), (9, 9 * MIN)), 3, 3, [10, 3]),
        ("stabilize - old recommendations",
         ((10, 10 * MIN), (4, MIN), (5, 2 * MIN), (9, 9 * MIN)), 3, 5, [10, 4, 5, 3]),
        ("TestStabilizeDownscale", ((10, 10 * MIN), (4, MIN)), 2, 4, [2, 4]),
    ],
)  # fmt: skip
def test_normalize_desired_replicas(case, history, raw, expected, stored):
    """TestNormalizeDesiredReplicas: a 5-minute window; one outdated slot is reused."""
    found, kept = stabilize(ago(*history), NOW, raw, 5 * MIN)
    assert (found, values(kept)) == (expected, stored), case


@pytest.mark.parametrize(
    ("case", "history", "current", "raw", "up_s", "down_s", "expected", "stored"),
    [
        ("empty recommendations for scaling down", (), 100, 5, 0, 0, 5, [5]),
        ("simple scale down stabilization", ((4, 2 * MIN), (5, MIN)), 100, 3, 0, 180, 5,
         [4, 5, 3]),
        ("simple scale up stabilization", ((4, 2 * MIN), (5, MIN)), 1, 7, 300, 0, 4, [4, 5, 7]),
        ("no scale down stabilization", ((1, 2 * MIN), (2, MIN)), 100, 3, 300, 0, 3, [1, 2, 3]),
        ("no scale up stabilization", ((4, 2 * MIN), (5, MIN)), 1, 3, 0, 300, 3, [4, 5, 3]),
        ("no scale down stabilization, reuse recommendation element",
         ((10, 10 * MIN), (9, 9 * MIN)), 100, 3, 0, 0, 3, [10, 3]),
        ("no scale up stabilization, reuse recommendation element",
         ((10, 10 * MIN), (9, 9 * MIN)), 1, 100, 0, 0, 100, [10, 100]),
        ("scale down stabilization, reuse one of obsolete recommendation element",
         ((10, 10 * MIN), (4, MIN), (5, 2 * MIN), (9, 9 * MIN)), 100, 3, 0, 180, 5,
         [10, 4, 5, 3]),
        ("scale up stabilization, reuse one of obsolete recommendation element",
         ((10, 100 * MIN), (6, MIN), (5, 2 * MIN), (9, 3 * MIN)), 1, 100, 300, 0, 5,
         [100, 6, 5, 9]),
        ("do not scale up when prenormalized rec goes down", ((2, 100 * MIN), (3, 3 * MIN)),
         2, 1, 300, 300, 2, None),
        ("do not scale down when prenormalized rec goes up", ((2, 100 * MIN), (1, 3 * MIN)),
         2, 3, 300, 300, 2, None),
    ],
)  # fmt: skip
def test_normalize_desired_replicas_with_behavior(
    case, history, current, raw, up_s, down_s, expected, stored
):
    """TestNormalizeDesiredReplicasWithBehavior."""
    found, kept = stabilize_with_behavior(ago(*history), NOW, raw, current, up_s, down_s)
    assert found == expected, case
    assert stored is None or values(kept) == stored, case


# horizontal_test.go: scale events and the limits they set

POLICIES_60 = (Rule("pods", 10, 60), Rule("percent", 100, 60))


@pytest.mark.parametrize(
    ("case", "rules", "previous", "changed", "stored"),
    [
        ("empty entries with two-policy-behavior", POLICIES_60, (), 0, [5]),
        ("one outdated entry to be replaced with behavior", POLICIES_60, ((7, 61),), 0, [5]),
        ("one actual entry to be not touched with behavior", POLICIES_60, ((7, 58),), 7, [7, 5]),
        ("two entries, one of them to be replaced", (Rule("pods", 10, 60),),
         ((7, 61), (6, 59)), 6, [5, 6]),
        ("replace one entry, use policies with different periods",
         (Rule("pods", 10, 60), Rule("percent", 100, 30)),
         ((8, 29), (6, 59), (7, 61), (9, 61)), 14, [8, 6, 7, 5]),
        ("two entries, both actual", (Rule("pods", 10, 120), Rule("percent", 100, 30)),
         ((7, 58), (6, 59)), 13, [7, 6, 5]),
    ],
)  # fmt: skip
def test_store_scale_events(case, rules, previous, changed, stored):
    """TestStoreScaleEvents: a change of 5 stored in the last slot outdated for the
    longest period, the others kept."""
    events = ago(*previous)
    assert replicas_changed(events, NOW, 60) == changed, case
    assert values(store_scale_event(events, NOW, 5, rules)) == stored, case


def test_without_behavior_no_scale_event_is_stored() -> None:
    """TestStoreScaleEvents, "empty entries with default behavior" and "one outdated entry
    to be kept untouched without behavior"."""
    burst = {"g": ({p: 100_000 for p in range(8)}, dict.fromkeys(range(8), 0))}
    plain = decide(NOW, burst, 2, DEFAULT, PolicyState(scale_up_events=ago((7, 61))))
    assert plain.desired == 4 and plain.state.scale_up_events == ago((7, 61))
    with_behavior = decide(NOW, burst, 2, replace(DEFAULT, behavior=True), PolicyState())
    assert with_behavior.state.scale_up_events == ((NOW, with_behavior.desired - 2),)


@pytest.mark.parametrize(
    ("current", "desired", "low", "high", "expected"),
    [(5, 7, 3, 8, 7), (3, 1, 2, 8, 2), (1, 0, 0, 10, 0), (20, 1000, 1, 10, 10),
     (3, 1000, 1, 2000, 24),
     (3, 99, 2, 5, 5)],  # TestMaxReplicas: the metrics ask for more than the 5 allowed
)  # fmt: skip
def test_convert_desired_replicas_with_rules(current, desired, low, high, expected):
    """TestConvertDesiredReplicasWithRules, whose tests set scaleUpLimitFactor to 8."""
    s = replace(DEFAULT, scale_up_limit_factor=8.0)
    assert clamp(current, desired, low, high, s) == expected


def test_the_scale_up_limit_is_twice_the_replicas_or_four_by_default() -> None:
    """calculateScaleUpLimit with the controller's factor 2.0 and minimum 4.0."""
    assert [clamp(c, 1000, 1, 2000, DEFAULT) for c in (1, 2, 3, 10)] == [4, 4, 6, 20]
    assert clamp(3, 1000, 1, 2000, replace(DEFAULT, scale_up_limit_minimum=10)) == 10


def uniform(*changes: int) -> tuple[tuple[float, int], ...]:
    """generateEventsUniformDistribution over 120 s: the nth of k at 120 - seg(n + 1) +
    seg / 2 seconds ago, seg = 120 / k."""
    seg = 120 / len(changes)
    return ago(*((c, 120 - seg * (n + 1) + seg / 2) for n, c in enumerate(changes)))


def rules(*given: tuple[str, int, int]) -> tuple[Rule, ...]:
    return tuple(Rule(kind, value, period) for kind, value, period in given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "low", "high", "current", "desired", "up", "down", "up_events", "down_events",
     "expected"),
    [
        ("prenormalized desired replicas within range", 3, 8, 5, 7, None, None, (), (), 7),
        ("prenormalized desired replicas < minReplicas", 2, 8, 3, 1, None, None, (), (), 2),
        ("prenormalized desired replicas within range when minReplicas is 0", 0, 10, 1, 0,
         None, None, (), (), 0),
        ("maxReplicas is the limit because maxReplicas < scaleUpLimit", 1, 10, 20, 1000, None,
         None, (), (), 10),
        ("desired replica count is more than the maximum replica count", 100, 150, 100, 1000,
         None, None, (), (), 150),
        ("scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
         1, 2000, 3, 1000, rules(("percent", 1, 60)), None, (), (), 4),
        ("scaleUp with default behavior", 1, 1000, 10, 50, None, None, (), (), 20),
        ("scaleUp with pods policy larger than percent policy", 1, 1000, 10, 500,
         rules(("pods", 100, 60), ("percent", 100, 60)), None, (), (), 110),
        ("scaleUp with percent policy larger than pods policy", 1, 1000, 10, 500,
         rules(("pods", 2, 60), ("percent", 100, 60)), None, (), (), 20),
        ("scaleUp with spec MaxReplicas limitation with large pod policy", 1, 1000, 10, 50,
         rules(("pods", 100, 60)), None, (), (), 50),
        ("scaleUp with spec MaxReplicas limitation with large percent policy", 1, 1000, 10, 50,
         rules(("pods", 10000, 60)), None, (), (), 50),
        ("scaleUp with pod policy limitation", 1, 1000, 10, 50, rules(("pods", 30, 60)), None,
         (), (), 40),
        ("scaleUp with percent policy limitation", 1, 1000, 10, 50, rules(("percent", 200, 60)),
         None, (), (), 30),
        ("scaleDown with percent policy larger than pod policy", 1, 1000, 100, 2, None,
         rules(("pods", 20, 60), ("percent", 1, 60)), (), (), 80),
        ("scaleDown with pod policy larger than percent policy", 1, 1000, 100, 2, None,
         rules(("pods", 2, 60), ("percent", 1, 60)), (), (), 98),
        ("scaleDown with spec MinReplicas=nil limitation with large pod policy", 1, 1000, 10, 0,
         None, rules(("pods", 100, 60)), (), (), 1),
        ("scaleDown with spec MinReplicas limitation with large percent policy", 5, 1000, 10, 2,
         None, rules(("percent", 100, 60)), (), (), 5),
        ("scaleDown with pod policy limitation", 1, 1000, 10, 2, None, rules(("pods", 5, 60)),
         (), (), 5),
        ("scaleDown with percent policy limitation", 1, 1000, 10, 5, None,
         rules(("percent", 50, 60)), (), (), 5),
        ("scaleUp with spec MaxReplicas limitation with large pod policy and events", 1, 200,
         100, 500, rules(("pods", 300, 60)), None, uniform(1, 5, 9), (), 200),
        ("scaleUp with spec MaxReplicas limitation with large percent policy and events", 1,
         200, 100, 500, rules(("percent", 10000, 60)), None, uniform(1, 5, 9), (), 200),
        ("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent "
         "scale up events", 1, 1000, 100, 500, rules(("pods", 5, 120)), None, uniform(1, 5, 9),
         (), 100),
        ("scaleUp with pod policy and previous scale up events", 1, 1000, 100, 500,
         rules(("pods", 150, 120)), None, uniform(1, 5, 9), (), 235),
        ("scaleUp with percent policy and previous scale up events", 1, 1000, 100, 500,
         rules(("percent", 200, 120)), None, uniform(1, 5, 9), (), 255),
        ("scaleUp with percent policy and previous scale up and down events", 1, 1000, 6, 24,
         rules(("percent", 300, 300)), None, uniform(4), uniform(2), 16),
        ("scaleDown with default policy and previous events", 1, 1000, 10, 5, None, None, (),
         uniform(1, 5, 9), 5),
        ("scaleDown with spec MinReplicas=nil limitation with large pod policy and previous "
         "events", 1, 1000, 100, 0, None, rules(("pods", 115, 120)), (), uniform(1, 5, 9), 1),
        ("scaleDown with spec MinReplicas limitation with large pod policy and previous events",
         5, 1000, 100, 0, None, rules(("pods", 130, 120)), (), uniform(1, 5, 9), 5),
        ("scaleDown with spec MinReplicas limitation with large percent policy and previous "
         "events", 5, 1000, 100, 2, None, rules(("percent", 100, 120)), (), uniform(1, 5, 9), 5),
        ("scaleDown with pod policy limitation and previous events", 1, 1000, 100, 2, None,
         rules(("pods", 5, 120)), (), uniform(1, 5, 9), 100),
        ("scaleDown with percent policy limitation and previous events", 1, 1000, 100, 0, None,
         rules(("percent", 50, 120)), (), uniform(2, 4, 6), 56),
        ("scaleDown with percent policy and previous scale up and down events", 1, 1000, 10, 1,
         None, rules(("percent", 50, 180)), uniform(2), uniform(4), 6),
        ("scaleDown with previous events preventing further scale down", 1, 1000, 100, 0, None,
         rules(("percent", 10, 120)), (), uniform(10, 10, 10), 100),
        ("scaleDown with with previous events still allowing more scale down", 1, 1000, 10, 5,
         None, rules(("percent", 1000, 120)), (), uniform(10, 10, 10), 5),
        ("check 'outdated' flag in events for one behavior for up", 1, 1000, 100, 200,
         rules(("pods", 1000, 60)), None, uniform(8, 12, 9, 11), (), 200),
        ("check that events were not marked 'outdated' for two different policies in the "
         "behavior for up", 1, 1000, 100, 200, rules(("pods", 1000, 120), ("percent", 100, 60)),
         None, uniform(8, 12, 9, 11), (), 200),
        ("check 'outdated' flag in events for one behavior for down", 1, 1000, 100, 5, None,
         rules(("pods", 1000, 60)), (), uniform(8, 12, 9, 11), 5),
        ("TestUpscaleCap", 1, 100, 3, 60, rules(("percent", 700, 60)), None, (), (), 24),
        ("TestUpscaleCapGreaterThanMaxReplicas", 1, 20, 3, 60, rules(("percent", 700, 60)),
         None, (), (), 20),
    ],
)  # fmt: skip
def test_scaling_with_rules(
    name, low, high, current, desired, up, down, up_events, down_events, expected
):
    """TestScalingWithRules (its case "scaleDownLimit is the limit because scaleDownLimit
    > minReplicas with user defined policies" is skipped upstream, and here); no rules
    given: the HPA's default ones."""
    s = replace(DEFAULT, behavior=True)
    if up is not None:
        s = replace(s, scale_up_policies=up)
    if down is not None:
        s = replace(s, scale_down_policies=down)
    found = rate_limit(current, desired, low, high, up_events, down_events, NOW, s)
    assert found == expected, name


def test_calculate_limits_with_select_policy_min() -> None:
    """TestCalculateScaleUpLimitWithScalingRules, TestCalculateScaleDownLimitWithBehaviors."""
    both = rules(("pods", 2, 60), ("percent", 50, 60))
    assert rule_limit(1, (), (), NOW, both, "min", rising=True) == 2
    assert rule_limit(5, (), (), NOW, both, "min", rising=False) == 3
    assert rule_limit(5, (), (), NOW, both, "disabled", rising=False) == 5


# kafka_scaler_test.go: the lag


def test_get_next_factor_and_find_factors() -> None:
    """TestGetNextFactor (100 partitions, threshold 10), TestFindFactors."""
    assert [next_factor(lag, 100, 10) for lag in (10, 20, 40, 50, 99, 100, 101)] == [
        1, 2, 4, 5, 10, 10, 20]  # fmt: skip
    assert factors(10) == [1, 2, 5, 10] and factors(13) == [1, 13] and factors(17) == [1, 17]
    assert factors(25) == [1, 5, 25] and factors(50) == [1, 2, 5, 10, 25, 50]
    assert factors(100) == [1, 2, 4, 5, 10, 20, 25, 50, 100] and factors(0) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", (1,)), ("1,2,3,4", (1, 2, 3, 4)), (" 1 , 2 , 3 ", (1, 2, 3)), ("1-4", (1, 2, 3, 4)),
     ("3-3", (3,)), (" 1 - 4 ", (1, 2, 3, 4)), ("1-4,8,10-12", (1, 2, 3, 4, 8, 10, 11, 12)),
     ("", None), ("           ", None)],
)  # fmt: skip
def test_kafka_parse_partition_limitation(text, expected):
    """TestKafkaParsePartitionLimitation, and the blank ones of parseKafkaMetadataTestDataset."""
    assert parse_partition_limitation(text) == expected


@pytest.mark.parametrize("text", ["a,b,c", "1-2-3", "a-3", "1-b", "a,b,c,d"])
def test_kafka_parse_partition_limitation_errors(text):
    with pytest.raises(SettingsError, match="KAPPAFLOW_PARTITION_LIMITATION"):
        parse_partition_limitation(text)


@pytest.mark.parametrize(
    ("case", "end", "committed", "policy", "to_zero", "expected"),
    [
        ("Scenario 1", None, None, "earliest", True, (0, 0)),
        ("Scenario 2", None, None, "earliest", False, (0, 0)),
        ("Scenario 3", None, 100, "earliest", False, (0, 0)),
        ("Control valid", 150, 100, "earliest", False, (50, 50)),
        ("Control latest+scaleToZero", 150, None, "latest", True, (0, 0)),
        ("latest, nothing committed", 150, None, "latest", False, (1, 1)),
        ("earliest, nothing committed", 150, None, "earliest", False, (150, 150)),
    ],
)
def test_get_lag_for_partition(case, end, committed, policy, to_zero, expected):
    """TestGetLagForPartition_MissingPartition, and getLagForPartition's invalid offsets."""
    s = replace(DEFAULT, offset_reset_policy=policy, scale_to_zero_on_invalid_offset=to_zero)
    assert partition_lag(end, committed, None, s) == expected, case


def test_persistent_lag_counts_for_activation_only_and_not_as_a_partition_with_lag() -> None:
    """getLagForPartition with excludePersistentLag, and getTotalLag counting partitions
    with lag on the lag for scaling: a stuck partition adds nothing to the bound."""
    s = Scaling(lag_threshold=10, exclude_persistent_lag=True, limit_to_partitions_with_lag=True)
    assert partition_lag(900, 100, 100, s) == (0, 800)
    assert partition_lag(900, 150, 100, s) == (750, 750)
    end, committed = {0: 900, 1: 900, 2: 10}, {0: 100, 1: 850, 2: 10}
    lag = keda_lag(end, committed, {0: 100, 1: 800}, s)  # 0 is stuck, 1 moves, 2 has none
    assert (lag.total, lag.uncapped, lag.active) == (10, 850, True)  # 1 partition x 10


@pytest.mark.parametrize(
    ("scenario", "settings", "lag", "partitions", "with_lag", "expected"),
    [
        ("earliest, 7 messages, capped at 3 partitions", {}, 7, 3, 3, 3),
        ("limitToPartitionsWithLag, 6 messages on one partition", {"limit": True}, 6, 3, 1, 1),
        ("limitToPartitionsWithLag, 5 more on a second", {"limit": True}, 11, 3, 2, 2),
        ("ensureEvenDistributionOfPartitions, lag 5 of 10 partitions", {"even": True}, 5, 10,
         10, 5),
        ("ensureEvenDistributionOfPartitions, lag 8 of 10 partitions", {"even": True}, 8, 10,
         10, 10),
        ("allowIdleConsumers: no cap", {"idle": True}, 7, 3, 3, 7),
    ],
)  # fmt: skip
def test_total_lag_caps_as_keda_end_to_end(scenario, settings, lag, partitions, with_lag,
                                           expected):  # fmt: skip
    """getTotalLag at lagThreshold 1, with the figures of KEDA's end-to-end Kafka tests
    (tests/scalers/kafka/kafka_test.go: the replicas equal the capped lag)."""
    s = Scaling(lag_threshold=1, limit_to_partitions_with_lag=settings.get("limit", False),
                ensure_even_distribution_of_partitions=settings.get("even", False),
                allow_idle_consumers=settings.get("idle", False))  # fmt: skip
    assert capped_lag(lag, partitions, with_lag, s) == expected, scenario


def test_partition_limitation_counts_only_the_partitions_named() -> None:
    """TestGetTopicPartitions ("1,2,3" of 1 to 6): only those partitions' lag, and the
    cap on their count."""
    s = Scaling(lag_threshold=10, partition_limitation="1,2,3")
    end = {p: 1000 for p in range(1, 7)}
    lag = keda_lag(end, dict.fromkeys(end, 0), {}, s)
    assert (lag.total, lag.uncapped) == (30, 3000)


def test_the_streams_lags_add_up_each_capped_on_its_own_partitions() -> None:
    """A trigger a stream, as the ScaledObject renders them, summed by its formula: the
    busy stream is capped at its own 4 partitions, not the 8 of both."""
    s = Scaling(lag_threshold=100, min_replicas=1, max_replicas=20)
    busy = ({p: 10_000 for p in range(4)}, dict.fromkeys(range(4), 0))
    idle = ({p: 5 for p in range(4)}, dict.fromkeys(range(4), 5))
    decision = decide(NOW, {"a.busy": busy, "a.idle": idle}, 4, s, PolicyState())
    assert decision.lag.total == 400 and decision.lag.uncapped == 40_000
    assert decision.desired == 4


def test_the_streams_formula_is_active_on_its_sum_of_what_the_triggers_report() -> None:
    """getScaledObjectState with scalingModifiers: the ScaledObject is active while the
    formula's value (the lags the triggers report: persistent lag left out) is over its
    activationTarget, whatever each trigger would say alone."""
    s = Scaling(lag_threshold=10, exclude_persistent_lag=True, activation_lag_threshold=5,
                min_replicas=0)  # fmt: skip
    stuck = ({0: 900}, {0: 100})
    assert keda_lag(*stuck, {0: 100}, s).active, "alone, its trigger is active"
    state = PolicyState(previous_committed={"g": {0: 100}})
    decision = decide(NOW, {"g": stuck}, 0, s, state)
    assert (decision.lag.active, decision.desired) == (False, 0)
    moving = decide(NOW, {"g": ({0: 900}, {0: 150})}, 0, s, state)
    assert (moving.lag.active, moving.desired) == (True, 1)


@pytest.mark.parametrize(
    ("settings", "topic", "message"),
    [
        ({"allow_idle_consumers": True, "limit_to_partitions_with_lag": True}, "t",
         "KAPPAFLOW_ALLOW_IDLE_CONSUMERS and KAPPAFLOW_LIMIT_TO_PARTITIONS_WITH_LAG"),
        ({"limit_to_partitions_with_lag": True}, None,
         "KAPPAFLOW_LIMIT_TO_PARTITIONS_WITH_LAG needs a topic"),
        ({"limit_to_partitions_with_lag": True, "ensure_even_distribution_of_partitions": True},
         "t", "KAPPAFLOW_LIMIT_TO_PARTITIONS_WITH_LAG and "
              "KAPPAFLOW_ENSURE_EVEN_DISTRIBUTION_OF_PARTITIONS"),
        ({"ensure_even_distribution_of_partitions": True}, None,
         "KAPPAFLOW_ENSURE_EVEN_DISTRIBUTION_OF_PARTITIONS needs a topic"),
        ({"partition_limitation": "a,b,c,d"}, "t", "KAPPAFLOW_PARTITION_LIMITATION"),
        ({"min_replicas": 2, "max_replicas": 1}, "t", r"KAPPAFLOW_MIN_REPLICAS \(2\) must not"),
        ({"min_replicas": 1, "idle_replica_count": 1}, "t",
         r"KAPPAFLOW_IDLE_REPLICA_COUNT \(1\) must be less than KAPPAFLOW_MIN_REPLICAS \(1\)"),
        ({"min_replicas": 1, "idle_replica_count": 2}, "t", "KAPPAFLOW_IDLE_REPLICA_COUNT"),
    ],
)  # fmt: skip
def test_trigger_settings_are_checked_as_keda_checks_them(settings, topic, message):
    """parseKafkaMetadataTestDataset's refused combinations, and
    TestCheckReplicaCountBoundsAreValid."""
    with pytest.raises(SettingsError, match=message):
        validate(Scaling(**settings), topic)


def test_trigger_settings_keda_accepts() -> None:
    """parseKafkaMetadataTestDataset's accepted ones, and TestCheckReplicaCountBoundsAreValid."""
    for given in ({}, {"allow_idle_consumers": True}, {"limit_to_partitions_with_lag": True},
                  {"ensure_even_distribution_of_partitions": True},
                  {"allow_idle_consumers": True, "limit_to_partitions_with_lag": False},
                  {"min_replicas": 1, "max_replicas": 5, "idle_replica_count": 0}):  # fmt: skip
        validate(Scaling(**given), "t")
    for name, value in (("lag_threshold", "0"), ("lag_threshold", "-1"),
                        ("activation_lag_threshold", "-1"), ("offset_reset_policy", "foo"),
                        ("allow_idle_consumers", "notvalid")):  # fmt: skip
        with pytest.raises(SettingsError, match=f"KAPPAFLOW_{name.upper()} must be"):
            Settings.load({f"KAPPAFLOW_{name.upper()}": value})


# scale_scaledobjects_test.go: KEDA's executor


@pytest.mark.parametrize(
    ("upstream", "settings", "current", "active", "expected"),
    [
        ("TestScaleToMinReplicasWhenNotActive", {"min_replicas": 0}, 10, False, 0),
        ("TestScaleToMinReplicasFromLowerInitialReplicaCount", {"min_replicas": 5}, 1, False, 5),
        ("TestScaleFromMinReplicasWhenActive", {"min_replicas": 0}, 0, True, 1),
        ("TestScaleToIdleReplicasWhenNotActive", {"idle_replica_count": 0, "min_replicas": 5},
         10, False, 0),
        ("TestScaleFromIdleToMinReplicasWhenActive", {"idle_replica_count": 0, "min_replicas": 5},
         0, True, 5),
        ("TestEventWitTriggerInfo", {"idle_replica_count": 0, "min_replicas": 5}, 2, True, 5),
        ("an active one in range: the HPA's", {"min_replicas": 1}, 3, True, None),
    ],
)  # fmt: skip
def test_request_scale(upstream, settings, current, active, expected):
    """RequestScale, created long before (no initial cooldown left) and never active."""
    s = Scaling(**settings)
    found = keda_replicas(NOW, current, active, s, PolicyState(started_s=0.0))
    assert (found[0] if found else None) == expected, upstream


def test_scale_in_waits_for_the_cooldown_and_the_initial_cooldown() -> None:
    """scaleToZeroOrIdle: last active + cooldownPeriod, or creation + initialCooldownPeriod
    when never active, must be before now."""
    s = Scaling(min_replicas=0, cooldown_period_s=300, initial_cooldown_period_s=120)
    fresh = PolicyState(started_s=NOW)
    assert keda_replicas(NOW + 120, 3, False, s, fresh) is None
    assert keda_replicas(NOW + 121, 3, False, s, fresh) == (0, "inactive past the cooldown")
    was_active = PolicyState(started_s=0.0, last_active_s=NOW)
    assert keda_replicas(NOW + 300, 3, False, s, was_active) is None
    assert keda_replicas(NOW + 301, 3, False, s, was_active) is not None


# fallback_test.go


@pytest.mark.parametrize(
    ("upstream", "behavior", "current", "expected"),
    [
        ("should return a normalised metric when number of failures are beyond threshold",
         "static", 5, 10),
        ("should use fallback replicas when current replicas is lower than fallback replicas "
         "and behavior is 'currentReplicasIfHigher'", "currentReplicasIfHigher", 4, 10),
        ("should use current replicas when behavior is 'currentReplicas'", "currentReplicas", 6,
         6),
        ("should ignore current replicas when behavior is 'static'", "static", 6, 10),
        ("doFallback, currentReplicasIfLower", "currentReplicasIfLower", 4, 4),
        ("doFallback, currentReplicasIfLower above", "currentReplicasIfLower", 12, 10),
    ],
)  # fmt: skip
def test_fallback_replicas(upstream, behavior, current, expected):
    """The metric is these replicas x the target: 100 for 10 at a target of 10."""
    s = Scaling(fallback_replicas=10, fallback_failure_threshold=3, fallback_behavior=behavior)
    assert fallback_replicas(current, s) == expected, upstream


def test_the_fallback_acts_once_the_failures_exceed_the_threshold() -> None:
    """ "should bump the number of failures when metrics call fails", then "should return
    a normalised metric when number of failures are beyond threshold" (3, then a 4th)."""
    s = Scaling(lag_threshold=10, fallback_replicas=10, fallback_failure_threshold=3)
    state, seen = PolicyState(), []
    for n in range(4):
        decision = decide(NOW + 15 * n, None, 5, s, state)
        state, _ = decision.state, seen.append((decision.desired, decision.recommendation))
    assert seen[:3] == [(5, None)] * 3 and state.failures == 4
    assert seen[3] == (10, 10) and decision.reason == "fallback"
    read = decide(NOW + 60, {"g": ({0: 10}, {0: 10})}, 10, s, state)
    assert read.state.failures == 0, "a successful read resets the count"
    without = decide(NOW, None, 5, replace(s, fallback_replicas=0), PolicyState(failures=9))
    assert without.desired == 5, "no fallback: the replicas stay"
