"""Crashes while events arrive, with real processes: a ``kappaflow worker`` process of
an app is killed with SIGKILL at random moments and restarted while a writer appends
the events, then one runs until it has caught up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kappaflow.app import App
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store

TESTS = Path(__file__).resolve().parents[1]


def start_worker(settings: Settings, app: App, *extra: str) -> subprocess.Popen[bytes]:
    """A worker process of ``app`` owning partitions 0-3 (tests/ on its path, where the
    tests' own apps are)."""
    command = [
        sys.executable,
        "-m",
        "kappaflow",
        "worker",
        "--app",
        app.name,
        "--partitions",
        "0-3",
    ]
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(TESTS)]))
    env = {**os.environ, **settings.to_environ(), "PYTHONPATH": path}
    return subprocess.Popen([*command, *extra], env=env)


def kill_while_appending(
    settings: Settings, app: App, events: Sequence[Any], kills: int = 6, seed: int = 5
) -> None:
    """Append ``events`` to the app's first stream (5,000 at once, then 2,000 every
    0.1 s) while its worker is killed ``kills`` times (the first mid-stream, once it has
    committed) and started again; then run one until it has caught up. Asserts that
    the first kill came mid-stream and that every record is committed."""
    stream, group = app.streams[0], app.group(app.streams[0])
    writer = open_log(settings, writer=True)
    appender = Appender(writer, stream, settings.partitions)
    appender.append(events[:5_000])

    def write_rest() -> None:
        for start in range(5_000, len(events), 2_000):
            appender.append(events[start : start + 2_000])
            time.sleep(0.1)

    feeder = threading.Thread(target=write_rest)
    feeder.start()
    rng = random.Random(seed)
    store = open_store(settings)
    offsets_at_kill = []
    process = None
    try:
        for attempt in range(kills):
            process = start_worker(settings, app)
            if attempt == 0:  # mid-stream, however slow the machine is to start a worker
                deadline = time.monotonic() + 60
                while not sum(store.committed_offsets(group).values()):
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.02)
            time.sleep(rng.uniform(0.6, 1.6) if attempt else rng.uniform(0, 0.3))
            process.send_signal(signal.SIGKILL)
            assert process.wait(10) == -signal.SIGKILL
            offsets_at_kill.append(sum(store.committed_offsets(group).values()))
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        feeder.join()
        writer.close()
    final = start_worker(settings, app, "--until-caught-up")
    assert final.wait(120) == 0
    assert len(offsets_at_kill) == kills
    reader = open_log(settings)
    ends = reader.end_offsets(stream.name)
    reader.close()
    assert offsets_at_kill[0] < sum(ends.values()), "the first kill hit the worker mid-stream"
    assert store.committed_offsets(group) == ends
    store.close()


def on_stack(settings: Settings, stack: Settings) -> Settings:
    """``settings`` with the log and store of ``stack`` (see the `stack_settings` fixture)."""
    return settings.replace(store=stack.store, postgres_dsn=stack.postgres_dsn, log=stack.log,
                            kafka_bootstrap_servers=stack.kafka_bootstrap_servers)  # fmt: skip
