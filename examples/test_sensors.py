"""Tests of the sensors app (examples/sensors.py) as its author writes them, with the
fixtures of kappaflow's pytest plugin. The project's pytest configuration names the
app, in pyproject.toml:

    [tool.pytest.ini_options]
    kappaflow_apps = ["sensors"]
"""

from __future__ import annotations

import pytest
from sensors import Reading

from kappaflow.settings import Settings

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in epoch ms
READINGS = [("kitchen", 0, 22.5), ("kitchen", 60, 31.5), ("kitchen", 120, 32.0),
            ("kitchen", 180, 25.0), ("kitchen", 240, 33.0), ("cellar", 0, 12.0)]  # fmt: skip
"""(sensor, seconds after T0, celsius): the kitchen goes above 30 °C twice."""
ALERTS = [("kitchen", T0 + 60_000, 31.5), ("kitchen", T0 + 240_000, 33.0)]


def readings() -> list[Reading]:
    return [Reading(sensor, celsius, T0 + s * 1000) for sensor, s, celsius in READINGS]


def test_alerts_are_counted_once_through_crashes(run_events) -> None:
    store = run_events(readings(), restarts=3)
    assert store.query("SELECT * FROM sensor_alerts ORDER BY start_ms") == ALERTS


def test_a_sensors_status_is_served(stack) -> None:
    client = stack.client()
    posted = [{"sensor_id": r.sensor_id, "celsius": r.celsius, "ts": r.ts} for r in readings()]
    assert client.post("/v1/streams/readings/events", json=posted).status_code == 202
    stack.wait_for_no_lag()
    status = client.get("/v1/sensors/kitchen").json()
    assert (status["celsius"], status["ts_ms"]) == (33.0, T0 + 240_000)
    assert [(a["start_ms"], a["celsius"]) for a in status["alerts"]] == [
        (start, celsius) for _, start, celsius in ALERTS
    ]


class TestOnKafka:
    """The same on a Kafka broker (skipped where there is none): this class's `settings`
    replace the plugin's for its tests and for the fixtures they use."""

    @pytest.fixture
    def settings(self, settings: Settings, kafka_bootstrap: str) -> Settings:
        return settings.replace(log="kafka", kafka_bootstrap_servers=kafka_bootstrap)

    def test_alerts_are_counted_once_through_crashes(self, run_events) -> None:
        store = run_events(readings(), restarts=3)
        assert store.query("SELECT * FROM sensor_alerts ORDER BY start_ms") == ALERTS
