"""An app of your own, as docs/apps.md builds it: temperature readings -> each sensor's
latest reading (the library's `Latest`), and an alert whenever a sensor goes above the
limit (a function of its own, over keyed state).

Run it beside the built-in apps:
``PYTHONPATH=examples KAPPAFLOW_APPS=video,clicks,sensors kappaflow up``; its limit:
``KAPPAFLOW_SENSORS_LIMIT_C=35``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import msgspec

from kappaflow.app import App, Batch, FunctionProcessor, Output, Query, State, Stream
from kappaflow.events import EventTime, Identifier
from kappaflow.ops import Latest
from kappaflow.settings import Settings
from kappaflow.store.base import Store, Table


class SensorSettings(msgspec.Struct, frozen=True):
    """The app's settings: ``KAPPAFLOW_SENSORS_LIMIT_C``, or ``limit_c`` in a TOML table
    ``[sensors]``."""

    limit_c: float = 30.0
    """A reading above this starts an alert."""


class Reading(msgspec.Struct):
    """One reading, as clients post it; ingest refuses anything else with a 400."""

    sensor_id: Identifier
    celsius: float
    ts: EventTime


class LatestReading(msgspec.Struct):
    """A sensor's latest reading."""

    sensor_id: str
    celsius: float
    ts_ms: int


class Alert(msgspec.Struct):
    """A reading above the limit after one at or below it."""

    sensor_id: str
    start_ms: int
    celsius: float


LATEST = Latest(LatestReading, by="sensor_id", time="ts_ms", table="sensor_latest")
ALERTS = Table.of(Alert, key=("sensor_id", "start_ms"), name="sensor_alerts")


class Sensor(msgspec.Struct, array_like=True):
    """What the processor keeps of each sensor, in its keyed state."""

    last_ms: int
    hot: bool


def watch(limit_c: float, sensors: State[Sensor], batch: Batch) -> Output[State[Sensor]]:
    """Each reading in turn: one above ``limit_c`` after one at or below it starts an
    alert. A reading not after the sensor's latest (a retry, or one overtaken by a later
    reading) is refused: it goes to the dead letters with the reason, whose kind (``not
    newer``, up to the colon) is what the dead letters are counted and filtered by."""
    alerts: list[Alert] = []
    refused: list[tuple[int, str]] = []
    for offset, reading, ts in zip(batch.offsets, batch.events, batch.times_ms, strict=True):
        sensor = sensors.get(reading.sensor_id)
        if sensor is not None and ts <= sensor.last_ms:
            reason = f"not newer: the sensor's latest reading is at {sensor.last_ms}"
            refused.append((offset, reason))
            continue
        hot = reading.celsius > limit_c
        if hot and (sensor is None or not sensor.hot):
            alerts.append(Alert(reading.sensor_id, ts, reading.celsius))
        sensors.set(reading.sensor_id, Sensor(ts, hot))
    return Output(sensors, {ALERTS.name: alerts}, refused)


class SensorStatus(LatestReading):
    """A sensor's latest reading and its alerts."""

    alerts: list[Alert]


def sensor_status(store: Store, params: Mapping[str, str]) -> SensorStatus | None:
    """The sensor's latest reading and its alerts; None (404) for a sensor never seen."""
    sensor = (params["sensor_id"],)
    found = store.select(LATEST.table, "sensor_id = ?", sensor)
    if not found:
        return None
    alerts = store.select(ALERTS, "sensor_id = ?", sensor, order_by="start_ms")
    return SensorStatus(*msgspec.structs.astuple(found[0]), alerts)


def create_app(settings: Settings) -> App:
    own = settings.app("sensors", SensorSettings)
    readings = Stream("readings", Reading, key="sensor_id", time="ts")
    return App(
        "sensors",
        streams=[readings],
        tables=[ALERTS],
        processors={readings.name: [LATEST, FunctionProcessor(partial(watch, own.limit_c),
                                                              Sensor)]},
        queries=[
            Query("/v1/sensors/{sensor_id}", sensor_status,
                  "A sensor's latest reading and the times it went above the limit.",
                  SensorStatus),
        ],
        settings=own,
    )  # fmt: skip
