"""A worker on its own (as in a container or a pod) serves /healthz and /metrics on
``worker_port``, so that probes and Prometheus reach it; SIGTERM still ends it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kappaflow.apps.video.app import Heartbeat, create_app
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.stream.endpoints import STALL_S, WorkerEndpoints
from kappaflow.testing import wait_until
from kappaflow.up import free_port

EVENTS = 40


def processed(metrics: str, group: str) -> float:
    prefix = f'kappaflow_events_processed_total{{group="{group}"}}'
    (line,) = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(line.split()[-1])


def test_a_worker_serves_health_and_its_metrics_and_ends_cleanly(tmp_path: Path) -> None:
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "apps": ("video",)})
    now_ms = int(time.time() * 1000)
    log = open_log(settings, writer=True)
    try:
        (stream,) = create_app(settings).streams
        log.create_topic(stream.name, settings.partitions)
        Appender(log, stream, settings.partitions).append(
            [Heartbeat(f"u{i}", "v", float(i), now_ms - 1000 + i) for i in range(EVENTS)]
        )
    finally:
        log.close()
    port = free_port()
    env = {**os.environ, "KAPPAFLOW_DATA_DIR": settings.data_dir, "KAPPAFLOW_APPS": "video",
           "KAPPAFLOW_WORKER_PORT": str(port)}  # fmt: skip
    output = tmp_path / "worker.log"
    with output.open("wb") as sink:
        worker = subprocess.Popen([sys.executable, "-m", "kappaflow", "worker"], env=env,
                                  stdout=sink, stderr=sink)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def counted() -> bool:
                assert worker.poll() is None, output.read_text()
                try:
                    metrics = client.get("/metrics").text
                except httpx.TransportError:
                    return False
                return processed(metrics, "video.heartbeats") == EVENTS

            wait_until(counted, 30, f"/metrics counting {EVENTS} events processed")
            health = client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            assert "kappaflow_dead_letters_total" in client.get("/metrics").text
            assert client.get("/readyz").status_code == 404
            assert client.post("/healthz").status_code == 405
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, output.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_healthz_fails_once_the_loop_stops_coming_round() -> None:
    endpoints = WorkerEndpoints("127.0.0.1", 0)
    should_stop = endpoints.watching(lambda: False)
    url = f"http://127.0.0.1:{endpoints.port}/healthz"
    assert httpx.get(url).status_code == 200
    endpoints.last_round -= STALL_S + 1
    stuck = httpx.get(url)
    assert stuck.status_code == 503
    assert "has not come round" in stuck.json()["detail"]
    assert should_stop() is False
    assert httpx.get(url).status_code == 200
