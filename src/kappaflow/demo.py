"""``kappaflow demo``: simulated viewers -> log -> worker processes -> SQLite, then a
check of every (user, video) against the simulator's ground truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kappaflow.app import load_apps
from kappaflow.apps.video import all_progress
from kappaflow.apps.video_sim import simulate
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store

console = Console(stderr=True)


def run_demo(events: int, viewers: int, workers: int, data_dir: str | None) -> bool:
    with tempfile.TemporaryDirectory(prefix="kappaflow-demo-") as temporary:
        settings = Settings.load(overrides={"data_dir": data_dir or temporary})
        return _run(settings, events, viewers, workers)


def _start_workers(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    shares = [list(range(settings.partitions))[i::count] for i in range(count)]
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kappaflow",
                "worker",
                "--data-dir",
                settings.data_dir,
                "--partitions",
                ",".join(map(str, share)),
            ],
            env={**os.environ, "KAPPAFLOW_DATA_DIR": settings.data_dir},
        )
        for share in shares
        if share
    ]


def _run(settings: Settings, events: int, viewers: int, workers: int) -> bool:
    console.rule("[bold]kappaflow demo: video heartbeats -> watched segments and progress")
    console.print(f"data directory: {settings.data_dir}, {settings.partitions} partitions")
    with console.status(f"simulating {events:,} heartbeats from {viewers:,} viewers"):
        workload = simulate(events, viewers=viewers, seed=7, jitter_ms=2_000, duplicates=0.005)
    app = next(a for a in load_apps(settings) if a.name == "video")
    stream = app.stream("heartbeats")
    log = open_log(settings, writer=True)
    appender = Appender(log, stream, settings.partitions)
    store = open_store(settings)
    store.create_tables(app.tables)
    processes = _start_workers(settings, workers)
    group = app.group(stream)
    started = time.perf_counter()
    try:
        with Progress(console=console, transient=True) as bar:
            sent = bar.add_task("appending to the log", total=len(workload.events))
            for start in range(0, len(workload.events), 1_000):
                chunk = workload.events[start : start + 1_000]
                appender.append(chunk)
                bar.advance(sent, len(chunk))
        appended = time.perf_counter() - started
        ends = log.end_offsets(stream.name)
        with console.status("waiting for the workers to process the backlog"):
            while True:
                committed = store.committed_offsets(group)
                if all(committed.get(p, 0) >= end for p, end in ends.items()):
                    break
                if any(p.poll() is not None for p in processes):
                    console.print("[red]a worker process exited early")
                    return False
                time.sleep(0.05)
        processed = time.perf_counter() - started
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
        log.close()
    return _report(store, group, workload, len(workload.events), appended, processed)


def _report(store, group, workload, count, appended, processed) -> bool:  # type: ignore[no-untyped-def]
    progress = {(p.user_id, p.video_id): p for p in all_progress(store)}
    wrong = []
    for key, truth in workload.truth.items():
        found = progress.get(key)
        if (
            found is None
            or abs(found.watched_s - truth.watched_s) > 1e-6
            or found.resume_position_s != truth.resume_position_s
        ):
            wrong.append(key)
    reasons = Counter(reason.split(":")[0] for _, _, reason, _ in store.dead_letters(group))
    segments = store.query("SELECT count(*) FROM video_segments")[0][0]
    watched_h = sum(p.watched_s for p in progress.values()) / 3600
    table = Table(title="what happened", show_header=False)
    table.add_row(
        "heartbeats appended", f"{count:,} in {appended:.1f} s ({count / appended:,.0f}/s)"
    )
    table.add_row("processed by workers", f"all, {count / processed:,.0f} events/s end to end")
    table.add_row("(user, video) pairs", f"{len(progress):,}")
    table.add_row("closed segments", f"{segments:,}; {watched_h:,.1f} hours watched")
    table.add_row("dead letters", ", ".join(f"{r}: {n}" for r, n in reasons.items()) or "none")
    verdict = "[green]correct" if not wrong else f"[red]{len(wrong)} pairs differ"
    table.add_row("vs ground truth", f"{verdict} ({len(workload.truth):,} pairs checked)")
    console.print(table)
    for key in wrong[:5]:
        console.print(f"  {key}: got {progress.get(key)}, expected {workload.truth[key]}")
    return not wrong
