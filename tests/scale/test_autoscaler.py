"""The autoscaler of ``kappaflow up`` (`kappaflow.scale.supervisor`) on a real log and
store: each decision recorded for the dashboard, the store keeping the last 20 of a
pool on SQLite and PostgreSQL, and ``kappaflow scale pause`` / ``resume`` holding a
pool and letting it go, as KEDA's paused-replicas annotation does."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pytest
from click.testing import CliRunner

from kappaflow.apps.video.app import Heartbeat, create_app
from kappaflow.cli import main
from kappaflow.errors import SettingsError, StoreUnavailable
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.scale.supervisor import Autoscaler, pool_policy
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import DECISIONS_KEPT, ScaleDecision, ScalingState, Store


class Pool:
    def __init__(self, workers: int) -> None:
        self.workers = workers

    def size(self) -> int:
        return self.workers

    def resize(self, workers: int) -> None:
        self.workers = workers


def test_the_store_keeps_each_pools_state_pause_and_last_decisions(backend_settings) -> None:
    with closing(open_store(backend_settings)) as store:
        assert store.scaling() == [] and store.scale_decisions() == []
        store.pause_scaling("video@2", 3)  # before its autoscaler ever ran
        for n in range(DECISIONS_KEPT + 5):
            state = ScalingState("live", n + 1, n + 1, 10 * n, 10 * n, 100, True, 1000.0 + n)
            store.record_scaling(state, ScaleDecision("live", 1000.0 + n, n, n + 1, 10 * n, "up"))
        store.record_scaling(ScalingState("video@2", 1, 1, 0, 0, 100, False, 2000.0), None)
        states, decisions = store.scaling(), store.scale_decisions()
        assert [(s.pool, s.current, s.active, s.paused) for s in states] == [
            ("live", DECISIONS_KEPT + 5, True, None), ("video@2", 1, False, 3)]  # fmt: skip
        assert len(decisions) == DECISIONS_KEPT and decisions[0].replicas == DECISIONS_KEPT + 5
        assert [d.at for d in decisions] == sorted((d.at for d in decisions), reverse=True)
        store.pause_scaling("video@2", None)
        assert store.scaling()[1].paused is None


def test_a_paused_pool_is_held_then_decided_again(settings: Settings) -> None:
    settings = settings.replace(
        apps=("video",), lag_threshold=10, max_replicas=4, offset_reset_policy="earliest"
    )  # nothing committed: all lag
    app = create_app(settings)
    (stream,) = app.streams
    with closing(open_log(settings, writer=True)) as log, closing(open_store(settings)) as store:
        log.create_topic(stream.name, settings.partitions)
        Appender(log, stream, settings.partitions).append(
            [Heartbeat(f"u{i}", "v", 1.0, 1_000 + i) for i in range(400)]
        )
        pool = Pool(1)
        autoscaler = Autoscaler(settings, [app], log, store, pool, exported=False)
        autoscaler.tick()
        assert pool.workers == 4  # 400 behind at 10 a worker: as many as allowed
        first = autoscaler.state.started_s
        states, decisions = store.scaling(), store.scale_decisions()
        assert [(s.pool, s.current, s.desired, s.lag, s.threshold) for s in states] == [
            ("live", 4, 4, 400, 10)]  # fmt: skip
        assert [(d.previous, d.replicas) for d in decisions] == [(1, 4)]
        assert decisions[0].reason == "recommendation 4, hpa"  # capped at 4 partitions x 10

        env = settings.to_environ()
        paused = CliRunner().invoke(main, ["scale", "pause", "2"], env=env)
        assert paused.exit_code == 0 and "pool live paused at 2 worker(s)" in paused.output
        autoscaler.tick()
        autoscaler.tick()
        assert pool.workers == 2 and store.scaling()[0].paused == 2
        assert store.scaling()[0].lag == 400, "the lag still read and shown while paused"
        assert store.scale_decisions()[0].reason == "paused"
        assert CliRunner().invoke(main, ["scale", "pause", "0"], env=env).exit_code == 0
        autoscaler.tick()
        assert pool.workers == 0, "paused at none"

        resumed = CliRunner().invoke(main, ["scale", "resume"], env=env)
        assert resumed.exit_code == 0 and "pool live resumed" in resumed.output
        autoscaler.tick()
        assert pool.workers == 1, "from none, KEDA activates one"
        assert autoscaler.state.started_s > first, "the policy starts afresh after a pause"
        autoscaler.tick()
        assert pool.workers == 4, "then the HPA decides on the lag again"
        shown = CliRunner().invoke(main, ["status", "--pace-s", "0"], env=env).output
        assert "autoscaler of live: 4 worker(s), 4 wanted; lag 400" in shown
        assert "live: 1 -> 4 workers; lag 400; recommendation" in shown
        assert "live: 0 -> 1 workers; lag 400; activated" in shown


class Failing:
    """A store that is down while ``down``: reads and writes raise `StoreUnavailable`."""

    def __init__(self, store: Store) -> None:
        self.store, self.down = store, False

    def __getattr__(self, name: str) -> Any:
        if self.down:
            raise StoreUnavailable(f"the store is down ({name})")
        return getattr(self.store, name)


def test_while_the_lag_cannot_be_read_the_pool_stays_or_the_fallback_acts(
    settings: Settings,
) -> None:
    settings = settings.replace(apps=("video",), lag_threshold=10, max_replicas=4,
                                fallback_replicas=3, fallback_failure_threshold=2)  # fmt: skip
    app = create_app(settings)
    with closing(open_log(settings, writer=True)) as log, closing(open_store(settings)) as real:
        log.create_topic(app.streams[0].name, settings.partitions)
        store, pool = Failing(real), Pool(1)
        autoscaler = Autoscaler(settings, [app], log, store, pool, exported=False)  # type: ignore[arg-type]
        autoscaler.tick()
        recorded = real.scaling(), real.scale_decisions()
        store.down = True
        autoscaler.tick()
        autoscaler.tick()
        assert pool.workers == 1 and len(autoscaler.history) == 1, "kept, nothing noted"
        autoscaler.tick()  # the third failure in a row: more than the threshold of 2
        assert pool.workers == 3
        assert (real.scaling(), real.scale_decisions()) == recorded, "nothing recorded while down"
        store.down = False
        autoscaler.tick()  # read again: the fallback's recommendation holds for the window
        assert pool.workers == 3 and real.scaling()[0].current == 3


def test_pools_and_topics_are_checked_and_bounds_are_the_pools(settings: Settings) -> None:
    env = settings.replace(apps=("video",)).to_environ()
    wrong = CliRunner().invoke(main, ["scale", "pause", "1", "--version", "video@9"], env=env)
    assert wrong.exit_code == 2 and "no pool 'video@9': `live`, or a deployed version (none)" in (
        wrong.output
    )
    held = {**env, "KAPPAFLOW_PAUSED_REPLICAS": "1"}
    refused = CliRunner().invoke(main, ["scale", "resume"], env=held)
    assert refused.exit_code == 2 and "KAPPAFLOW_PAUSED_REPLICAS=1 pauses every pool" in (
        refused.output
    )
    with pytest.raises(
        SettingsError, match="KAPPAFLOW_TOPICS names no stream of the apps: hartbeats"
    ):
        pool_policy(settings.replace(topics=("hartbeats",)), ["heartbeats"])
    bounded = pool_policy(settings.replace(partitions=4, min_replicas=6, max_replicas=9), [])
    assert (bounded.min_replicas, bounded.max_replicas) == (4, 4)
    idle = pool_policy(
        settings.replace(partitions=4, max_replicas=9, allow_idle_consumers=True), []
    )
    assert idle.max_replicas == 9
