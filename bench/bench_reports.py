"""A royalty report over a year of data: the incrementally maintained table that the
API reads, against recomputing the same report from a year of closed segments with
SQL (what the workers' incremental writes save every request)."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from common import START_MS, Figure
from rich.console import Console

from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.reports import day_of, royalty_report
from kappaflow.settings import Settings
from kappaflow.store import open_store

DAY_MS = 86_400_000
SEGMENTS_PER_DAY = 3_000
HOLDERS = 8
console = Console()


def run(scale: float) -> list[Figure]:
    per_day = max(100, round(SEGMENTS_PER_DAY * scale))
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        settings = Settings.load({}, {"data_dir": str(Path(tmp) / "data")})
        store = open_store(settings)
        store.create_tables(create_app(settings).all_tables)
        rng = random.Random(1)
        videos = [(f"v{n}", "t", 600.0, f"h{n % HOLDERS}", 0.01) for n in range(100)]
        store.upsert({"video_catalog": videos})
        with console.status(f"writing a year of data ({per_day * 365:,} segments)"):
            for day in range(365):
                segments, royalties = [], {}
                for n in range(per_day):
                    video = rng.randrange(100)
                    start_ms = START_MS + day * DAY_MS + rng.randrange(DAY_MS - 700_000)
                    length = rng.randrange(10, 600)
                    segments.append((f"u{n}", f"v{video}", start_ms, 0, 0.0, float(length),
                                     start_ms, start_ms + length * 1000))  # fmt: skip
                    key = (day_of(start_ms), f"h{video % HOLDERS}")
                    watched, amount = royalties.get(key, (0, 0))
                    royalties[key] = (watched + length * 1000, amount + length * 166)
                rows = [(*key, *values) for key, values in royalties.items()]
                store.commit("bench", [], {"video_segments": segments, "video_royalties": rows})
        params = {"from": day_of(START_MS), "to": day_of(START_MS + 364 * DAY_MS)}
        incremental = _best(lambda: royalty_report(store, params))
        recompute = _best(lambda: store.query(
            "SELECT date(s.start_ms / 1000, 'unixepoch') AS day, c.license_holder, "
            "sum(s.end_s - s.start_s), sum((s.end_s - s.start_s) / 60 * c.royalty_rate_per_minute) "
            "FROM video_segments s JOIN video_catalog c USING (video_id) "
            "WHERE s.start_ms BETWEEN ? AND ? GROUP BY 1, 2",
            (START_MS, START_MS + 365 * DAY_MS),
        ), runs=2)  # fmt: skip
    console.print(f"royalty report for a year: {incremental * 1000:.1f} ms from the report "
                  f"table, {recompute * 1000:,.0f} ms recomputed from segments")  # fmt: skip
    return [
        Figure("royalty report, a year (ms)", incremental * 1000, "ms",
               "recomputed from segments", recompute * 1000),
    ]  # fmt: skip


def _best(action, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)
