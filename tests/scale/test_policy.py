"""The scaling policy against the examples of docs/autoscaling.md, and its invariants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from kappaflow.scale.policy import PolicyState, decide, hpa_recommendation, keda_lag
from kappaflow.settings import Rule, Scaling, parse_rules

BEHAVIOR = Scaling(lag_threshold=100, min_replicas=1, behavior=True)
PLAIN = Scaling(lag_threshold=100, min_replicas=1)


def lag_of(total: int, partitions: int) -> tuple[dict[int, int], dict[int, int]]:
    """End and committed offsets with ``total`` lag spread over the partitions."""
    end = {p: 1_000_000 + total // partitions + (p < total % partitions) for p in range(partitions)}
    return end, dict.fromkeys(range(partitions), 1_000_000)


def test_lag_is_capped_at_partitions_times_threshold() -> None:
    end, committed = lag_of(1050, 8)
    lag = keda_lag(end, committed, {}, PLAIN)
    assert (lag.total, lag.uncapped, lag.active) == (800, 1050, True)


def test_vector_1_without_behavior_caps_at_twice_the_replicas() -> None:
    end, committed = lag_of(1050, 8)
    decision = decide(0, {"s": (end, committed)}, 3, PLAIN, PolicyState())
    assert decision.recommendation == 8  # 800 / 300 = 2.67 -> ceil(800 / 100)
    assert decision.desired == 6  # max(2 * 3, 4)


def test_vector_1_with_default_behavior_adds_four_pods_or_doubles() -> None:
    end, committed = lag_of(1050, 8)
    assert decide(0, {"s": (end, committed)}, 3, BEHAVIOR, PolicyState()).desired == 7


def test_vector_2_the_cap_fires_only_when_the_quotient_exceeds_the_partitions() -> None:
    settings = Scaling(lag_threshold=3000, min_replicas=1)
    end, committed = lag_of(192_001, 64)
    assert keda_lag(end, committed, {}, settings).total == 192_001  # 64 is not > 64
    decision = decide(0, {"s": (end, committed)}, 50, settings, PolicyState())
    assert (decision.recommendation, decision.desired) == (65, 65)
    limited = decide(
        0, {"s": (end, committed)}, 50, replace(settings, max_replicas=64), PolicyState()
    )
    assert limited.desired == 64


def test_vector_3_tolerance() -> None:
    assert hpa_recommendation(250, 100, 3, 0.1) == 3  # 0.83: outside, ceil(2.5) = 3
    assert hpa_recommendation(275, 100, 3, 0.1) == 3  # 0.917: within tolerance
    assert hpa_recommendation(275, 100, 2, 0.1) == 3  # 1.375: outside
    assert hpa_recommendation(310, 100, 3, 0.1) == 3  # 1.033: within, keep 3 (not 4)
    assert hpa_recommendation(340, 100, 3, 0.1) == 4


def run(settings: Scaling, lags: list[int], start: int, step_s: float = 15):
    """Replicas after each poll, the load's lag given per poll."""
    state, current, seen = PolicyState(), start, []
    for n, total in enumerate(lags):
        end, committed = lag_of(total, 8)
        committed = {p: c + n for p, c in committed.items()}  # progress: no persistent lag
        end = {p: e + n for p, e in end.items()}
        decision = decide(n * step_s, {"s": (end, committed)}, current, settings, state)
        state, current = decision.state, decision.desired
        seen.append(current)
    return seen


def test_vector_4_scale_down_waits_for_the_stabilization_window() -> None:
    lags = [800] * 4 + [0] * 30  # 15 s polls: the load stops at t = 60 s
    plain = run(PLAIN, lags, start=8)
    assert plain[:4] == [8] * 4
    # the last 300 s of recommendations hold the 8 of t = 45 s: without behavior until
    # t = 345 s included (only a recommendation before the window's start is outdated),
    # with behavior until 345 s excluded (one after its start counts), as in the HPA
    assert plain[4:24] == [8] * 20, plain
    assert plain[24] == 1
    behavior = run(BEHAVIOR, lags, start=8)
    assert behavior[4:23] == [8] * 19 and behavior[23] == 1


def test_scale_to_zero_only_after_the_cooldown() -> None:
    settings = replace(PLAIN, min_replicas=0, cooldown_period_s=300)
    seen = run(settings, [800] * 2 + [0] * 40, start=8)
    # last active at t = 15 s: the HPA holds 8 meanwhile, and after 315 s the cooldown ends
    assert seen[21] == 8
    assert all(n == 0 for n in seen[22:])
    # and from zero, activity brings one replica back at once
    back = run(settings, [0, 0, 500], start=0)
    assert back == [0, 0, 1]


def test_activation_threshold_and_offsets_never_committed() -> None:
    settings = replace(PLAIN, activation_lag_threshold=50)
    end, committed = lag_of(40, 8)
    assert not keda_lag(end, committed, {}, settings).active
    nothing = keda_lag({0: 500, 1: 700}, {}, {}, settings)
    assert (nothing.total, nothing.active) == (2, False)  # latest: lag 1 each
    earliest = keda_lag({0: 500, 1: 700}, {}, {}, replace(settings, offset_reset_policy="earliest"))
    assert earliest.uncapped == 1200
    zero = replace(settings, scale_to_zero_on_invalid_offset=True)
    assert keda_lag({0: 500}, {}, {}, zero).uncapped == 0


def test_persistent_lag_is_left_out_of_scaling_but_not_activation() -> None:
    settings = replace(PLAIN, exclude_persistent_lag=True)
    end, committed = {0: 900, 1: 900}, {0: 100, 1: 850}
    lag = keda_lag(end, committed, {0: 100, 1: 800}, settings)
    assert (lag.total, lag.uncapped, lag.active) == (50, 850, True)


def test_limit_to_partitions_with_lag() -> None:
    settings = replace(PLAIN, limit_to_partitions_with_lag=True)
    end, committed = {0: 5_000, 1: 10, 2: 10}, {0: 0, 1: 10, 2: 10}
    assert keda_lag(end, committed, {}, settings).total == 100  # one partition with lag
    assert keda_lag(end, committed, {}, PLAIN).total == 300


def test_rate_limit_counts_changes_made_in_the_period() -> None:
    settings = replace(BEHAVIOR, scale_up_policies=(Rule("pods", 2, 60),), max_replicas=50)
    seen = run(settings, [5_000] * 6, start=1)
    assert seen == [3, 3, 3, 3, 5, 5]  # +2 per minute


def test_rules_parse_from_settings_text() -> None:
    assert parse_rules("pods:4:15, percent:100:15") == (
        Rule("pods", 4, 15), Rule("percent", 100, 15)
    )  # fmt: skip


@given(
    lags=st.lists(st.integers(0, 20_000), min_size=1, max_size=40),
    start=st.integers(0, 12),
    behavior=st.booleans(),
    min_replicas=st.integers(0, 3),
    max_replicas=st.integers(3, 20),
)
def test_invariants(lags, start, behavior, min_replicas, max_replicas) -> None:
    settings = Scaling(lag_threshold=100, behavior=behavior, min_replicas=min_replicas,
                              max_replicas=max_replicas)  # fmt: skip
    state, current = PolicyState(), min(start, max_replicas)
    for n, total in enumerate(lags):
        end, committed = lag_of(total, 8)
        decision = decide(n * 15, {"s": (end, committed)}, current, settings, state)
        desired = decision.desired
        assert desired == 0 or min_replicas <= desired <= max_replicas
        assert desired <= max(current, 8) or decision.recommendation is not None
        if decision.recommendation is not None and desired < current:
            window = [r for t, r in decision.state.recommendations if n * 15 - t < 300]
            assert max(window) < current, "no scale-down while a recent recommendation is higher"
        state, current = decision.state, desired


@given(desired=st.integers(0, 200), partitions=st.integers(1, 64), allow=st.booleans())
def test_workers_never_exceed_partitions_unless_idle_consumers_are_allowed(
    desired: int, partitions: int, allow: bool
) -> None:
    from kappaflow.scale.supervisor import workers_for

    workers = workers_for(desired, partitions, allow)
    assert workers == (desired if allow else min(desired, partitions))
