"""Replaying history into a new app version (`kappaflow.deployments`): the log holds
simulated heartbeats that version 1 of the video app has processed; version 2 (the
same app, `replay_v2`) is deployed and one worker of its own replays them from the
log's start into its own tables, through the worker pools of ``kappaflow up``
(`Stack`, without the HTTP server), while version 1's worker serves live traffic
appended at `RATE` heartbeats/s. The baseline replays the same history with nothing
else running. Figure: history replayed per second, to the end of the history."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

from common import START_MS, Figure
from rich.console import Console

from kappaflow.app import build_app
from kappaflow.apps.video.sim import heartbeats
from kappaflow.deployments import deploy, record
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.up import Stack

HISTORY = 2_000_000
VIEWERS = 50_000
RATE = 20_000
"""Heartbeats appended per second while version 2 replays, in the trial under load."""
CHUNK = 1_000
PARTITIONS = 8
HERE = Path(__file__).resolve().parent
console = Console()


def run(scale: float) -> list[Figure]:
    history = max(50_000, int(HISTORY * scale))
    with console.status(f"simulating {history:,} heartbeats and a minute of live ones"):
        stream = heartbeats(VIEWERS, 0, START_MS, jitter_ms=1_000)
        past = list(itertools.islice(stream, history))
        live = list(itertools.islice(stream, RATE * 60))
    alone = trial(past, [])
    loaded = trial(past, live)
    return [Figure(f"replay of {history:,} heartbeats while version 1 serves {RATE:,}/s",
                   history / loaded, "events/s", "the replay with nothing else running",
                   history / alone)]  # fmt: skip


def trial(past: list, live: list) -> float:
    """Seconds version 2 takes to replay ``past``, with ``live`` appended meanwhile
    (version 1 running) or not (nothing else running)."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    what = "under load" if live else "alone"
    with tempfile.TemporaryDirectory() as data:
        settings = Settings.load(overrides={"data_dir": data, "apps": ("video",)}).replace(
            partitions=PARTITIONS, autoscale=False)  # fmt: skip
        first = build_app(settings, "kappaflow.apps.video.app")
        with closing(open_log(settings, writer=True)) as writer:
            appender = Appender(writer, first.streams[0], PARTITIONS)
            for start in range(0, len(past), CHUNK):
                appender.append(past[start : start + CHUNK])
        stack = Stack(settings, quiet=True)
        try:
            with closing(open_store(settings)) as store, closing(open_log(settings)) as log:
                record(settings, [first], store, log)
                if live:
                    stack.resize(1)
                    wait_processed(store, first.group(first.streams[0]), len(past), "version 1")
                second = build_app(settings, "replay_v2")
                deploy(settings, second, store, log)
                feeding = threading.Event()
                feeder = threading.Thread(target=feed, args=(settings, live, feeding))
                feeder.start()
                started = time.perf_counter()
                try:
                    stack.run_versions([second.ref], 1)
                    wait_processed(store, second.group(second.streams[0]), len(past),
                                   f"version 2 {what}")  # fmt: skip
                    took = time.perf_counter() - started
                finally:
                    feeding.set()
                    feeder.join()
        finally:
            stack.stop()
    console.print(f"replay {what}: {len(past):,} heartbeats in {took:.1f} s")
    return took


def feed(settings: Settings, events: list, stop: threading.Event) -> None:
    """Append ``events`` at `RATE` a second, `CHUNK` at a time, until ``stop``."""
    if not events:
        return
    first = build_app(settings, "kappaflow.apps.video.app")
    with closing(open_log(settings, writer=True)) as writer:
        appender = Appender(writer, first.streams[0], PARTITIONS)
        started = time.perf_counter()
        for sent in range(0, len(events), CHUNK):
            if stop.is_set():
                return
            appender.append(events[sent : sent + CHUNK])
            pause = started + (sent + CHUNK) / RATE - time.perf_counter()
            if pause > 0:
                stop.wait(pause)


def wait_processed(store, group: str, count: int, what: str, timeout_s: float = 600) -> None:
    """Until ``group`` has committed at least ``count`` records (the history: the
    embedded log's offsets count records)."""
    deadline = time.monotonic() + timeout_s
    while sum(store.committed_offsets(group).values()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not process {count:,} records in {timeout_s} s")
        time.sleep(0.05)
