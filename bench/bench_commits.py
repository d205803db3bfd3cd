"""The worker alone on the end-to-end benchmark's workload: 100,000 concurrent viewers,
so nearly every heartbeat of a commit changes a key of its own. The events wait in the
log (appended 2,000 at a time, as ingest appends a request); ``batch_max_events`` sets
how many a commit carries, from what a worker that keeps up at 20,000 events/s commits
every 250 ms (5,600) to full batches (160,000). Figures: events/s and CPU per event over
the second half of the events, against full batches."""

from __future__ import annotations

import itertools
import tempfile
import time

from bench_sessionize import append_events, consume
from common import Figure
from rich.console import Console

from kappaflow.apps.video.sim import heartbeats
from kappaflow.settings import Settings

VIEWERS = 100_000
EVENTS = 2_000_000
"""Twenty heartbeats a viewer, 100 s of event time. Only the second half is measured:
by then the watermark (30 s of lateness) releases every heartbeat and closes sessions as
under steady load, which costs about twice as much per heartbeat as the first 30 s."""
PER_PARTITION = (350, 700, 1_400, 2_800, 20_000)
PARTITIONS = 8
console = Console()


def run(scale: float) -> list[Figure]:
    count = int(max(EVENTS * scale, 4 * VIEWERS))
    with console.status(f"simulating {count:,} heartbeats of {VIEWERS:,} viewers"):
        stream = heartbeats(VIEWERS, 0, int(time.time() * 1000), jitter_ms=1_000)
        events = list(itertools.islice(stream, count))
    measured = {size: process(events, size) for size in PER_PARTITION}
    full, full_cpu = measured[PER_PARTITION[-1]]
    baseline = f"{PER_PARTITION[-1] * PARTITIONS:,} per commit"
    figures = []
    for size, (rate, cpu_us) in measured.items():
        per_commit = f"{size * PARTITIONS:,} events per commit"
        console.print(f"{per_commit}: {rate:,.0f} events/s, {cpu_us:.1f} µs of CPU per event")
        figures += [
            Figure(f"commits: worker, {per_commit}", rate, "events/s", baseline, full),
            Figure(f"commits: CPU per event, {per_commit}", cpu_us, "µs", baseline, full_cpu),
        ]
    return figures


def process(events: list, per_partition: int) -> tuple[float, float]:
    """Events/s and µs of CPU per event of one worker over the second half of
    ``events``, committing at most ``per_partition`` events of each partition at a time."""
    half = len(events) // 2
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as data:
        settings = commit_settings(data, per_partition)
        with console.status(f"{per_partition * PARTITIONS:,} events per commit: first half"):
            append_events(settings, events[:half], 2_000)
            worker = consume(settings)
            append_events(settings, events[half:], 2_000)
        wall, cpu = time.perf_counter(), time.process_time()
        with console.status(f"{per_partition * PARTITIONS:,} events per commit"):
            worker.run(lambda: False, until_caught_up=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert worker.stats.events == len(events), worker.stats
        measured = len(events) - half
        return measured / wall, cpu / measured * 1e6


def commit_settings(data_dir: str, per_partition: int) -> Settings:
    """Settings of a worker committing at most ``per_partition`` events of each partition
    at a time, with no wait between commits."""
    return Settings.load({}, {"data_dir": data_dir, "partitions": PARTITIONS,
                              "batch_max_events": per_partition,
                              "commit_interval_ms": 0})  # fmt: skip
