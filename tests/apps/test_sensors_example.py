"""The app of docs/apps.md (examples/sensors.py), loaded as a user's app is: by the
module path named in the settings, then served, processed and restored by the same
services and worker as the built-in apps."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from kappaflow.app import load_apps
from kappaflow.errors import AppError
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.worker import Worker
from kappaflow.testing import run_events
from kappaflow.testing.services import serving

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EVENTS = "/v1/streams/readings/events"
T0 = 1_767_225_600_000


@pytest.fixture
def sensors_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return settings.replace(apps=("sensors",), batch_max_events=50)


def reading(sensor: str, second: int, celsius: float) -> dict:
    return {"sensor_id": sensor, "celsius": celsius, "ts": T0 + second * 1000}


def test_the_app_is_served_processed_and_queried(sensors_settings: Settings) -> None:
    (app,) = load_apps(sensors_settings)
    readings = [reading("a", 1, 25.0), reading("a", 2, 31.0), reading("a", 3, 32.5),
                reading("a", 4, 29.0), reading("a", 5, 35.0), reading("b", 1, 20.0)]  # fmt: skip
    with serving(sensors_settings, ("ingest", "query")) as client:
        assert client.post(EVENTS, json=readings).status_code == 202
        bad = client.post(EVENTS, json=[{"sensor_id": "a", "ts": T0}])
        assert (bad.status_code, bad.json()["problems"][0]["field"]) == (400, "celsius")
        worker = Worker(app, app.streams[0], open_log(sensors_settings),
                        open_store(sensors_settings), sensors_settings, range(4))  # fmt: skip
        worker.start()
        worker.run(lambda: False, until_caught_up=True)
        status = client.get("/v1/sensors/a")
        assert status.status_code == 200
        assert status.json() == {
            "sensor_id": "a", "celsius": 35.0, "ts_ms": T0 + 5000,
            "alerts": [{"sensor_id": "a", "start_ms": T0 + 2000, "celsius": 31.0},
                       {"sensor_id": "a", "start_ms": T0 + 5000, "celsius": 35.0}],
        }  # fmt: skip
        assert client.get("/v1/sensors/b").json()["alerts"] == []
        assert client.get("/v1/sensors/nobody").status_code == 404
        assert "/v1/sensors/{sensor_id}" in client.get("/openapi.json").json()["paths"]


def test_readings_not_after_the_latest_are_refused_with_the_reason(
    sensors_settings: Settings,
) -> None:
    (app,) = load_apps(sensors_settings)
    retried = [reading("a", 1, 25.0), reading("a", 2, 31.0), reading("a", 2, 31.0),
               reading("a", 1, 40.0)]  # fmt: skip
    store = run_events(app, [app.streams[0].schema(**r) for r in retried], sensors_settings)
    letters = store.dead_letters(app.group(app.streams[0]))
    assert [reason for *_, reason, _ in letters] == [
        f"not newer: the sensor's latest reading is at {T0 + 2000}"
    ] * 2
    assert store.query("SELECT sensor_id, start_ms, celsius FROM sensor_alerts") == [
        ("a", T0 + 2000, 31.0)
    ]


def test_the_limit_is_the_apps_own_setting(sensors_settings: Settings) -> None:
    (app,) = load_apps(sensors_settings.replace(sensors_limit_c=35))
    readings = [reading("a", 1, 31.0), reading("a", 2, 36.0), reading("b", 1, 34.0)]
    store = run_events(app, [app.streams[0].schema(**r) for r in readings], sensors_settings)
    assert store.query("SELECT sensor_id, start_ms, celsius FROM sensor_alerts") == [
        ("a", T0 + 2000, 36.0)
    ]


def expected(readings: list[dict]) -> tuple[set, set, int]:
    """The latest rows, the alerts and how many are refused, by the app's rule over the
    readings in posting order."""
    last: dict[str, tuple[int, bool]] = {}
    latest, alerts, refused = {}, set(), 0
    for r in readings:
        sensor, ts, celsius = r["sensor_id"], r["ts"], r["celsius"]
        if sensor in last and ts <= last[sensor][0]:
            refused += 1
            continue
        if celsius > 30.0 and not (sensor in last and last[sensor][1]):
            alerts.add((sensor, ts, celsius))
        last[sensor] = (ts, celsius > 30.0)
        latest[sensor] = (sensor, celsius, ts)
    return set(latest.values()), alerts, refused


def test_state_restored_after_crashes_gives_the_same_results(
    sensors_settings: Settings,
) -> None:
    (app,) = load_apps(sensors_settings)
    rng = random.Random(7)
    readings = [reading(f"s{rng.randrange(12)}", second + rng.randrange(-3, 4),
                        round(rng.uniform(20.0, 40.0), 1)) for second in range(2_000)]  # fmt: skip
    events = [app.streams[0].schema(**r) for r in readings]
    store = run_events(app, events, sensors_settings, restarts=8, seed=3)
    latest, alerts, refused = expected(readings)
    assert set(store.query("SELECT * FROM sensor_latest")) == latest
    assert set(store.query("SELECT * FROM sensor_alerts")) == alerts
    assert len(alerts) > 50 and refused > 50
    assert len(store.dead_letters(app.group(app.streams[0]))) == refused


@pytest.mark.parametrize(
    ("apps", "message"),
    [
        (("no_such_module",), "cannot import app 'no_such_module'"),
        (("json",), "app module 'json' has no create_app(settings) function"),
    ],
)
def test_an_app_that_cannot_load_is_named(
    settings: Settings, apps: tuple[str, ...], message: str
) -> None:
    with pytest.raises(AppError, match=re.escape(message)):
        load_apps(settings.replace(apps=apps))
