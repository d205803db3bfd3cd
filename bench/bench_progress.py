"""Progress rows written by two workers into one SQLite store, as at 100,000
heartbeats/s: 100,000 (user, video) rows, each worker owning half of 8 partitions and
committing 7,500 rows of its own keys at a time (0.6 rows a heartbeat, 250 ms of its
50,000 heartbeats/s), in turn with the other. The table keyed by partition first, as
the video app keys it, against the same rows keyed by (user, video): there every
commit rewrites pages all over the table, here only its own partitions' pages. Figures:
CPU (the checkpoint thread included) and disk writes per row, of both workers, the
median of three runs of each, alternating."""

from __future__ import annotations

import multiprocessing
import random
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

import psutil
from common import Figure
from rich.console import Console

from kappaflow.apps.video.events import PROGRESS
from kappaflow.log.partitioner import partitions_for
from kappaflow.store.base import Table
from kappaflow.store.sqlite import SQLiteStore

KEYS = 100_000
PARTITIONS = 8
WORKERS = 2
ROWS = 7_500
COMMITS = 120
ROUNDS = 3
"""Each layout measured this many times, alternating; figures are the medians."""
BY_KEY = Table(PROGRESS.name, PROGRESS.columns, key=("user_id", "video_id"))
"""The table as keyed before: by (user, video) alone."""
console = Console()
spawn = multiprocessing.get_context("spawn")


def run(scale: float) -> list[Figure]:
    commits = max(10, round(COMMITS * scale))
    measured: dict[str, list[tuple[float, float]]] = {"by partition": [], "by key": []}
    for round_ in range(1, ROUNDS + 1):
        for name, table in (("by partition", PROGRESS), ("by key", BY_KEY)):
            with (
                tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as data,
                console.status(f"round {round_} of {ROUNDS}: progress rows keyed {name}"),
            ):
                cpu, written = write(Path(data) / "store.db", table, commits)
            measured[name].append((cpu, written))
            console.print(f"round {round_}, keyed {name}: {cpu:.2f} µs of CPU and "
                          f"{written:,.0f} bytes written a row")  # fmt: skip
    (cpu, written), (cpu_before, written_before) = (
        [statistics.median(column) for column in zip(*measured[name], strict=True)]
        for name in ("by partition", "by key")
    )
    baseline = "keyed by (user, video)"
    return [
        Figure("progress rows, 2 workers: CPU a row", cpu, "µs", baseline, cpu_before),
        Figure("progress rows, 2 workers: disk writes a row", written, "bytes", baseline,
               written_before),
    ]  # fmt: skip


def write(path: Path, table: Table, commits: int) -> tuple[float, float]:
    """µs of CPU and bytes written a row by ``WORKERS`` processes committing ``commits``
    times each into a store of ``KEYS`` rows of ``table``."""
    store = SQLiteStore(path)
    store.create_tables([table])
    store.commit("bench", [], {table.name: rows(keys(), 0)})
    store.close()
    barrier = spawn.Barrier(WORKERS)
    pipes = [spawn.Pipe(duplex=False) for _ in range(WORKERS)]
    processes = [
        spawn.Process(target=writer, args=(path, table, worker, commits, barrier, sender))
        for worker, (_, sender) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    results = [receiver.recv() for receiver, _ in pipes]
    for process in processes:
        process.join()
    cpu, written = (sum(column) for column in zip(*results, strict=True))
    written_rows = WORKERS * commits * ROWS
    return cpu / written_rows * 1e6, written / written_rows


def writer(
    path: Path, table: Table, worker: int, commits: int, barrier: Barrier, results: Connection
) -> None:
    """One worker's commits of its own partitions' keys: (CPU seconds, bytes written)."""
    store = SQLiteStore(path)
    store.create_tables([table])
    own = [key for key in keys() if key[0] % WORKERS == worker]
    rng = random.Random(worker)
    me = psutil.Process()
    barrier.wait()
    cpu, written = time.process_time(), me.io_counters().write_bytes
    for commit in range(1, commits + 1):
        store.commit("bench", [], {table.name: rows(rng.sample(own, ROWS), commit)})
    store.close()  # its checkpoints end with it
    results.send((time.process_time() - cpu, me.io_counters().write_bytes - written))


def keys() -> list[tuple[int, str, str]]:
    """(partition, user, video) of ``KEYS`` viewers, named as the simulator names them."""
    rng = random.Random(0)
    pairs = [(f"user-{n}-{rng.randrange(3)}", f"video-{rng.randrange(2_000)}") for n in range(KEYS)]
    users = [user for user, _ in pairs]
    return [(p, *pair) for p, pair in zip(partitions_for(users, PARTITIONS), pairs, strict=True)]


def rows(chosen: list[tuple[int, str, str]], commit: int) -> list[tuple[object, ...]]:
    """Progress rows of the ``chosen`` keys as of a commit: each a little further on."""
    position = 5.0 * commit
    return [(p, user, video, position, 1_767_225_600_000 + 5_000 * commit,
             f"[[0.0,{position}]]") for p, user, video in chosen]  # fmt: skip
