"""Workers on Kafka as they run on Kubernetes: members of the consumer group, which
assigns them partitions (cooperative-sticky). One is SIGKILLed mid-stream, another
joins; the group moves partitions between them, the store's generations fence, and
every result table equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kappaflow.apps.video import create_app
from kappaflow.apps.video_sim import simulate
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing import result_tables, run_events

pytestmark = pytest.mark.integration
TABLES = ("video_segments", "video_progress", "kf_dead_letters")


def test_group_assigned_workers_survive_a_kill_and_a_rebalance(
    tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str
) -> None:
    workload = simulate(30_000, viewers=200, seed=9, jitter_ms=2_000, duplicates=0.01)
    # Progress rows on every change: at an accuracy, which are written depends on the batches.
    base = {"partitions": 4, "idle_timeout_s": 3600, "batch_max_events": 300,
            "progress_accuracy_s": 0}  # fmt: skip
    reference = Settings.load({}, {**base, "data_dir": str(tmp_path / "reference")})
    run_events(create_app(reference), workload.events, reference).close()

    settings = Settings.load({}, {
        **base, "data_dir": str(tmp_path / "kafka"), "log": "kafka", "store": "postgres",
        "kafka_bootstrap_servers": kafka_bootstrap, "postgres_dsn": postgres_dsn,
        # a killed member leaves the group after 6 s instead of 45
        "kafka_client_config": ("session.timeout.ms=6000", "heartbeat.interval.ms=500"),
    })  # fmt: skip
    env = {**os.environ, **settings.to_environ()}

    command = [sys.executable, "-m", "kappaflow", "worker", "--app", "video", "-v"]

    def worker() -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE))
        return started[-1]

    writer = open_log(settings, writer=True)
    appender = Appender(writer, create_app(settings).streams[0], settings.partitions)

    def write() -> None:
        for start in range(0, len(workload.events), 1_000):
            appender.append(workload.events[start : start + 1_000])
            time.sleep(0.05)

    feeder = threading.Thread(target=write)
    started: list[subprocess.Popen[bytes]] = []
    try:
        first, second = worker(), worker()
        feeder.start()
        time.sleep(4)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        third = worker()
        feeder.join()
        ends = writer.end_offsets("heartbeats")
        writer.close()
        store = open_store(settings)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            committed = store.committed_offsets("video.heartbeats")
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                break
            time.sleep(0.2)
        store.close()
        logs = []
        for process in (second, third):
            process.send_signal(signal.SIGTERM)
            logs.append(process.communicate(timeout=30)[1].decode())
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert all(committed.get(p, -1) >= end for p, end in ends.items()), (committed, ends, logs)
    assert any("gave up partitions" in text or "owns partitions" in text for text in logs)
    assert result_tables(settings, TABLES) == result_tables(reference, TABLES)
