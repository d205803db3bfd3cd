"""Effectively-once under crashes, with real processes: while a writer appends a
viewing workload, a ``kappaflow worker`` process is killed with SIGKILL at random
moments and restarted; every result table must equal an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.catalog import load as load_catalog
from kappaflow.apps.video.sim import simulate, simulated_catalog
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.testing import DEAD_LETTERS, run_events

pytestmark = pytest.mark.integration

GROUP = "video.heartbeats"
TABLES = {
    "video_segments": "SELECT * FROM video_segments ORDER BY 1, 2, 3, 4",
    "video_progress": "SELECT * FROM video_progress ORDER BY 1, 2, 3",
    "kf_dead_letters": DEAD_LETTERS,
    "video_royalties": "SELECT * FROM video_royalties ORDER BY 1, 2",
    "ad_impressions": "SELECT * FROM ad_impressions ORDER BY 1, 2, 3",
    "ad_viewers": "SELECT * FROM ad_viewers ORDER BY 1, 2, 3, 4",
}


def snapshot(store: Store) -> dict[str, list[tuple]]:
    return {name: store.query(sql) for name, sql in TABLES.items()}


def settings_for(path: Path) -> Settings:
    # A long idle timeout: idle flushing depends on wall-clock pauses, which the kills
    # change on purpose; small batches make many commits to be interrupted. Progress rows
    # are written on every change: at an accuracy, which rows are written depends on the
    # batches, and the kills change those too.
    return Settings.load(
        {},
        {
            "data_dir": str(path),
            "partitions": 4,
            "batch_max_events": 300,
            "idle_timeout_s": 3600,
            "poll_interval_ms": 10,
            "video_progress_accuracy_s": 0,
        },
    )


def start_worker(settings: Settings, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kappaflow", "worker", "--app", "video", "--partitions", "0-3"]
    return subprocess.Popen([*command, *extra], env={**os.environ, **settings.to_environ()})


def test_sigkilled_worker_restarts_to_the_same_results(
    tmp_path: Path, stack_settings: Settings
) -> None:
    """On each stack, against one uninterrupted run on the embedded stack."""
    workload = simulate(60_000, viewers=300, seed=11, jitter_ms=3_000, duplicates=0.01)
    events = workload.events
    catalog = simulated_catalog(11)
    uninterrupted = settings_for(tmp_path / "uninterrupted")
    load_catalog(open_store(uninterrupted), catalog)
    reference = snapshot(run_events(create_app(uninterrupted), events, uninterrupted))
    assert all(reference[name] for name in ("video_segments", "kf_dead_letters", "ad_viewers"))
    assert {row[1] for row in reference["video_royalties"]} > {"unknown"}

    settings = settings_for(tmp_path / "killed").replace(
        store=stack_settings.store,
        postgres_dsn=stack_settings.postgres_dsn,
        log=stack_settings.log,
        kafka_bootstrap_servers=stack_settings.kafka_bootstrap_servers,
    )
    app = create_app(settings)
    catalog_store = open_store(settings)
    load_catalog(catalog_store, catalog)
    catalog_store.close()
    writer = open_log(settings, writer=True)
    appender = Appender(writer, app.streams[0], settings.partitions)
    appender.append(events[:5_000])

    def write_rest() -> None:
        for start in range(5_000, len(events), 2_000):
            appender.append(events[start : start + 2_000])
            time.sleep(0.1)

    feeder = threading.Thread(target=write_rest)
    feeder.start()
    rng = random.Random(5)
    kills = 0
    store = open_store(settings)
    offsets_at_kill = []
    process = None
    try:
        for attempt in range(6):
            process = start_worker(settings)
            if attempt == 0:  # mid-stream, however slow the machine is to start a worker
                deadline = time.monotonic() + 60
                while not sum(store.committed_offsets(GROUP).values()):
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.02)
            time.sleep(rng.uniform(0.6, 1.6) if attempt else rng.uniform(0, 0.3))
            process.send_signal(signal.SIGKILL)
            assert process.wait(10) == -signal.SIGKILL
            kills += 1
            offsets_at_kill.append(sum(store.committed_offsets(GROUP).values()))
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        feeder.join()
        writer.close()
    final = start_worker(settings, "--until-caught-up")
    assert final.wait(120) == 0

    assert kills == 6
    reader = open_log(settings)
    ends = reader.end_offsets(app.streams[0].name)
    reader.close()
    assert offsets_at_kill[0] < sum(ends.values()), "the first kill hit the worker mid-stream"
    assert store.committed_offsets(GROUP) == ends
    got = snapshot(store)
    store.close()
    for name in reference:
        assert got[name] == reference[name], f"{name} differs from the uninterrupted run"
