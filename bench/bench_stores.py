"""The store's commit path: heartbeats sessionized by one worker with segments,
progress, reports, state and offsets committed to PostgreSQL (a throwaway server of
the run's own, committing durably), next to the same run on SQLite."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
from bench_sessionize import append_file, process
from common import Figure, timed
from rich.console import Console

from kappaflow.apps.video.sim import simulate
from kappaflow.settings import Settings
from kappaflow.testing.postgres import postgres_database, postgres_server

EVENTS = 500_000
console = Console()


def run(scale: float) -> list[Figure]:
    count = round(EVENTS * scale)
    with (
        postgres_server(durable=True) as server,
        postgres_database(server.dsn) as dsn,
        tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp,
    ):
        workload = simulate(count, viewers=3_000, seed=2, jitter_ms=2_000)
        path = Path(tmp) / "heartbeats.ndjson"
        path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in workload.events))
        events = len(workload.events)
        rates = {}
        for store in ("sqlite", "postgres"):
            settings = Settings.load(
                {}, {"data_dir": f"{tmp}/{store}", "store": store, "postgres_dsn": dsn,
                     "batch_max_events": 5_000},
            )  # fmt: skip
            append_file(settings, path)
            segments, seconds = timed(lambda settings=settings: process(settings))
            rates[store] = events / seconds
            console.print(f"{store}: {rates[store]:,.0f} events/s, {sum(segments.values()):,} "
                          "segments")  # fmt: skip
    return [
        Figure("worker commits to PostgreSQL", rates["postgres"], "events/s",
               "same run on SQLite", rates["sqlite"]),
    ]  # fmt: skip
