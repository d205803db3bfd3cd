"""Autoscaling with real processes: a burst makes ``kappaflow up`` scale workers up,
then down once the stabilization window has passed; partitions move between workers
each time (the first worker runs on and hands over or takes back its share), and every
result table must still equal an unscaled run's."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.catalog import load as load_catalog
from kappaflow.apps.video.sim import simulate, simulated_catalog
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing import result_tables, run_events

pytestmark = pytest.mark.integration
TABLES = ("video_segments", "video_progress", "video_royalties", "ad_impressions",
          "ad_viewers", "kf_dead_letters")  # fmt: skip
SCALING = {
    "KAPPAFLOW_IDLE_TIMEOUT_S": "3600",
    "KAPPAFLOW_LAG_THRESHOLD": "100",
    "KAPPAFLOW_POLLING_INTERVAL_S": "0.1",
    "KAPPAFLOW_SCALE_DOWN_STABILIZATION_S": "3",
    "KAPPAFLOW_BATCH_MAX_EVENTS": "2000",
    "KAPPAFLOW_POLL_INTERVAL_MS": "400",  # an idle worker lets lag build up between polls
    # A worker drains the waiting half in well under a second once it runs; counting a
    # partition with no commit yet as all lag (the workers do start from its first record)
    # lets the first tick, before the new worker's first commit, see the whole backlog.
    "KAPPAFLOW_OFFSET_RESET_POLICY": "earliest",
    # Progress rows on every change: at an accuracy, which are written depends on the batches.
    "KAPPAFLOW_VIDEO_PROGRESS_ACCURACY_S": "0",
}


def metric(text: str, name: str) -> float:
    found = [line.split()[-1] for line in text.splitlines() if line.startswith(name)]
    return float(found[0]) if found else 0.0


def test_scaling_up_and_down_loses_and_repeats_nothing(
    tmp_path: Path, kappaflow, stack_settings: Settings
) -> None:
    """On each stack, against an unscaled run on the embedded one."""
    workload = simulate(60_000, viewers=400, seed=5, jitter_ms=2_000, duplicates=0.01)
    catalog = simulated_catalog(5)
    unscaled = Settings.load({}, {"data_dir": str(tmp_path / "unscaled"), "idle_timeout_s": 3600,
                                  "partitions": 4, "video_progress_accuracy_s": 0})  # fmt: skip
    load_catalog(open_store(unscaled), catalog)
    run_events(create_app(unscaled), workload.events, unscaled).close()

    scaled = stack_settings.replace(data_dir=str(tmp_path / "scaled"), partitions=4)
    catalog_store = open_store(scaled)
    load_catalog(catalog_store, catalog)
    catalog_store.close()
    encode = msgspec.json.Encoder().encode
    half = len(workload.events) // 2
    # Half the workload waits in the log when the stack starts; the other half is the
    # burst, over HTTP, while the workers are being resized.
    writer = open_log(scaled, writer=True)
    Appender(writer, create_app(scaled).streams[0], scaled.partitions).append(
        workload.events[:half]
    )
    writer.close()
    env = {
        **SCALING,
        "KAPPAFLOW_PARTITIONS": "4",
        "KAPPAFLOW_LOG": scaled.log,
        "KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": scaled.kafka_bootstrap_servers,
        "KAPPAFLOW_STORE": scaled.store,
        "KAPPAFLOW_POSTGRES_DSN": scaled.postgres_dsn,
    }
    with kappaflow("up", "--data-dir", scaled.data_dir, env=env) as stack:
        client = stack.client()
        for start in range(half, len(workload.events), 2_000):
            chunk = workload.events[start : start + 2_000]
            answer = client.post("/v1/streams/heartbeats/events", content=encode(chunk),
                                 headers={"content-type": "application/json"})  # fmt: skip
            assert answer.status_code == 202
        peak, deadline = 0.0, time.monotonic() + 90
        while time.monotonic() < deadline:
            text = client.get("/metrics").text
            peak = max(peak, metric(text, 'kappaflow_replicas{kind="current"}'))
            scaled_down = metric(text, 'kappaflow_scale_decisions_total{direction="down"}')
            if metric(text, "kappaflow_total_lag") == 0 and scaled_down >= 1:
                break
            time.sleep(0.2)
        assert stack.stop() == 0
    log = stack.output.read_text()
    assert "scale up: 1 -> " in log, log
    assert "scale down: " in log, log
    assert peak >= 2
    assert log.count("started worker 0 ") == 1, "worker 0 ran on through every resize"
    assert "worker 0 (pid" in log and "to own partitions [0, 2]" in log, log
    assert result_tables(scaled, TABLES) == result_tables(unscaled, TABLES)
