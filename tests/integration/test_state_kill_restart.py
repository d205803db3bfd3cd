"""Keyed state with a TTL under crashes, with real processes: while a writer appends
hits, a ``kappaflow worker`` process of the visits app (tests/visits_app.py) is killed
with SIGKILL at random moments and restarted; the visits must equal an uninterrupted
run's: keys expired and were deleted meanwhile, and none came back after a restart."""

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
from visits_app import create_app, hits
from visits_app import kept as kept_keys

from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.testing import run_events

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
GROUP = "visits.hits"


def settings_for(path: Path) -> Settings:
    # Small batches make many commits to be interrupted; a long idle timeout keeps the
    # wall clock, which the kills change on purpose, out of the results.
    return Settings.load({}, {"data_dir": str(path), "partitions": 4, "batch_max_events": 300,
                              "idle_timeout_s": 3600, "poll_interval_ms": 10}
                         ).replace(apps=("visits_app",))  # fmt: skip


def visits(store: Store) -> list[tuple[str, int, int]]:
    return store.query("SELECT * FROM visits ORDER BY 1, 2")


def start_worker(settings: Settings, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "kappaflow",
        "worker",
        "--app",
        "visits",
        "--partitions",
        "0-3",
    ]
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(TESTS)]))
    env = {**os.environ, **settings.to_environ(), "PYTHONPATH": path}
    return subprocess.Popen([*command, *extra], env=env)


def test_sigkilled_worker_restarts_to_the_same_visits_and_keys(
    tmp_path: Path, stack_settings: Settings
) -> None:
    """On each stack, against one uninterrupted run on the embedded stack."""
    events = hits(40_000)
    uninterrupted = settings_for(tmp_path / "uninterrupted")
    reference = visits(run_events(create_app(uninterrupted), events, uninterrupted))
    assert len(reference) > 1_000

    settings = settings_for(tmp_path / "killed").replace(
        store=stack_settings.store,
        postgres_dsn=stack_settings.postgres_dsn,
        log=stack_settings.log,
        kafka_bootstrap_servers=stack_settings.kafka_bootstrap_servers,
    )
    app = create_app(settings)
    writer = open_log(settings, writer=True)
    appender = Appender(writer, app.streams[0], settings.partitions)
    appender.append(events[:4_000])

    def write_rest() -> None:
        for start in range(4_000, len(events), 2_000):
            appender.append(events[start : start + 2_000])
            time.sleep(0.1)

    feeder = threading.Thread(target=write_rest)
    feeder.start()
    rng = random.Random(5)
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
            time.sleep(rng.uniform(0.4, 1.2) if attempt else rng.uniform(0, 0.3))
            process.send_signal(signal.SIGKILL)
            assert process.wait(10) == -signal.SIGKILL
            offsets_at_kill.append(sum(store.committed_offsets(GROUP).values()))
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        feeder.join()
        writer.close()
    final = start_worker(settings, "--until-caught-up")
    assert final.wait(120) == 0

    reader = open_log(settings)
    ends = reader.end_offsets(app.streams[0].name)
    reader.close()
    assert offsets_at_kill[0] < sum(ends.values()), "the first kill hit the worker mid-stream"
    assert store.committed_offsets(GROUP) == ends
    assert visits(store) == reference, "the visits differ from the uninterrupted run's"
    kept = {key for claim in store.claim(GROUP, range(4), "test").values() for key in claim.keys}
    store.close()
    must, may = kept_keys(events)  # which near the TTL depends on how batches were cut
    assert must <= kept <= may
