"""Heartbeats -> watched segments on a generated file: kappaflow's log + worker path
(one process, one core) against batch computations of the same segments: Polars and
DuckDB (the vectorized limit) and a plain-Python pass over a dict.

The file holds simulated viewers (pauses, seeks, abandonment, out-of-order delivery
within the allowed lateness, 0.5% client retries). Every side must produce the same
multiset of (user, video, start_s, end_s) segments, or the benchmark fails.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import polars as pl
from common import Figure, Segments, timed
from rich.console import Console

from kappaflow.apps.video.app import VideoSettings, create_app
from kappaflow.apps.video.events import KIND_RANK, PAUSE, SEEK, Heartbeat
from kappaflow.apps.video.sim import simulate
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.worker import Worker

EVENTS = 2_900_000  # the simulator stops players at the end: about 2 million heartbeats
VIEWERS = 5_000
WORKERS = 2  # one per core, as DuckDB's threads
console = Console()


def run(scale: float) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        # Progress written on every change: the open sessions' segments are then exact,
        # as the batch engines compute them.
        settings = Settings.load(
            {}, {"data_dir": str(Path(tmp) / "one"), "video_progress_accuracy_s": 0}
        )
        path = Path(tmp) / "heartbeats.ndjson"
        events = write_heartbeats(path, scale)

        _, append_s = timed(lambda: append_file(settings, path))
        console.print(f"appended to the log: {events / append_s:,.0f} events/s")
        pair = settings.replace(data_dir=str(Path(tmp) / "two"))
        shutil.copytree(settings.log_path, pair.log_path)
        worker_s = timed_workers(settings, 1)
        console.print(f"log + worker + SQLite: {events / worker_s:,.0f} events/s")
        pair_s = timed_workers(pair, WORKERS)
        console.print(f"{WORKERS} workers: {events / pair_s:,.0f} events/s")
        worker_segments = segments(settings)
        _check_same(worker_segments, segments(pair), f"{WORKERS} workers")
        baselines = {}
        for name, compute in BASELINES.items():
            batch, seconds = timed(
                partial(compute, path, settings.app("video", VideoSettings).session_gap_s)
            )
            console.print(f"{name}: {events / seconds:,.0f} events/s")
            _check_same(worker_segments, batch, name)
            baselines[name] = events / seconds
    console.print(f"same {sum(worker_segments.values()):,} segments on every side")
    worker_rate, pair_rate = events / worker_s, events / pair_s
    fastest = max(baselines, key=baselines.__getitem__)
    one_thread = "DuckDB batch, 1 thread"
    return [
        Figure("log append (fsync per batch)", events / append_s, "events/s"),
        Figure(f"sessionize: log+{WORKERS} workers+SQLite", pair_rate, "events/s",
               f"fastest batch ({fastest})", baselines[fastest]),
        Figure("sessionize: log+worker+SQLite", worker_rate, "events/s",
               one_thread, baselines[one_thread]),
        *(Figure(f"sessionize baseline: {name}", rate, "events/s", "log+worker+SQLite",
                 worker_rate) for name, rate in baselines.items()),
    ]  # fmt: skip


def _check_same(worker: Segments, baseline: Segments, name: str) -> None:
    if worker != baseline:
        difference = (worker - baseline) + (baseline - worker)
        raise AssertionError(f"{name}: segments differ, e.g. {list(difference)[:5]}")


def write_heartbeats(path: Path, scale: float, share: float = 1.0) -> int:
    """Write the benchmark's heartbeats to ``path`` as NDJSON; return how many. A
    ``share`` below 1 keeps that share of the viewers, each viewing as long."""
    count, viewers = round(EVENTS * scale * share), round(VIEWERS * share)
    with console.status(f"simulating {count:,} heartbeats of {viewers:,} viewers"):
        workload = simulate(count, viewers, seed=1, jitter_ms=2_000, duplicates=0.005)
        path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in workload.events))
    events = len(workload.events)
    console.print(f"{events:,} heartbeats, {path.stat().st_size / 2**20:,.0f} MiB of NDJSON")
    return events


def append_file(settings: Settings, path: Path) -> None:
    decode = msgspec.json.Decoder(Heartbeat).decode
    with path.open("rb") as lines:
        append_events(settings, map(decode, lines), 5_000)


def append_events(settings: Settings, events: Iterable[Heartbeat], per_call: int) -> None:
    """Append ``events`` to the video app's stream, ``per_call`` at a time (as ingest
    appends the events of one request)."""
    log = open_log(settings, writer=True)
    appender = Appender(log, create_app(settings).streams[0], settings.partitions)
    chunk: list[Heartbeat] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == per_call:
            appender.append(chunk)
            chunk = []
    if chunk:
        appender.append(chunk)
    log.close()


def consume(settings: Settings, partitions: Sequence[int] | None = None) -> Worker:
    """One worker over ``partitions`` (default: all) of the video app's stream, run
    until they are consumed."""
    app = create_app(settings)
    owned = range(settings.partitions) if partitions is None else partitions
    worker = Worker(app, app.streams[0], open_log(settings), open_store(settings), settings,
                    owned)  # fmt: skip
    worker.start()
    worker.run(lambda: False, until_caught_up=True)
    return worker


def timed_workers(settings: Settings, count: int) -> float:
    """Seconds ``count`` worker processes, each owning every count-th partition and
    started before the clock, take to consume the log."""
    context = multiprocessing.get_context("spawn")  # no fork of Polars' and DuckDB's threads
    ready, go = context.Barrier(count + 1), context.Event()
    parts = range(settings.partitions)
    processes = [
        context.Process(target=_consume_when_told, args=(settings, parts[i::count], ready, go))
        for i in range(count)
    ]
    for process in processes:
        process.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
        if process.exitcode:
            raise RuntimeError(f"a worker exited with {process.exitcode}")
    return time.perf_counter() - started


def _consume_when_told(settings: Settings, partitions: Sequence[int], ready: Any, go: Any) -> None:
    ready.wait()
    go.wait()
    consume(settings, partitions)


def process(settings: Settings) -> Segments:
    """Run one worker over every partition until the log is consumed; return the
    segments."""
    consume(settings)
    return segments(settings)


def segments(settings: Settings) -> Segments:
    """The segments of closed and still-open sessions in the store."""
    store = open_store(settings)
    found: Segments = Counter(
        store.query("SELECT user_id, video_id, start_s, end_s FROM video_segments")
    )
    for user, video, open_segments in store.query(
        "SELECT user_id, video_id, open_segments FROM video_progress"
    ):
        found.update((user, video, s, e) for s, e in msgspec.json.decode(open_segments))
    store.close()
    return found


def polars_batch(path: Path, gap_s: float) -> Segments:
    """The sessionizer's rules as column expressions over the whole file."""
    seek, pause, stop = KIND_RANK["seek"], KIND_RANK["pause"], KIND_RANK["stop"]
    ranks = pl.DataFrame({"kind": list(KIND_RANK), "rank": list(KIND_RANK.values())})
    pair = ["user_id", "video_id"]
    df = (
        pl.read_ndjson(path, schema_overrides={"position_s": pl.Float64})
        .with_columns(pl.col("kind").fill_null("heartbeat"))
        .join(ranks, on="kind")
        .select(*pair, "ts", "rank", "position_s")
        .unique()
        .sort(*pair, "ts", "rank", "position_s")
    )
    prev = [pl.col(c).shift(1).over(pair) for c in ("ts", "rank", "position_s")]
    prev_ts, prev_rank, prev_position = prev
    closing = pl.col("rank").is_in([pause, stop])
    same_session = (pl.col("ts") - prev_ts) <= gap_s * 1000
    drift = (pl.col("position_s") - prev_position) - (pl.col("ts") - prev_ts) / 1000
    joins = (
        same_session.fill_null(False)
        & ~prev_rank.is_in([pause, stop]).fill_null(True)
        & (pl.col("rank") != seek)
        & (drift.abs() <= gap_s).fill_null(False)
    )
    segments = (
        df.with_columns(joins.alias("joins"))
        .with_columns(starts=~pl.col("joins") & ~closing)
        .filter(pl.col("joins") | pl.col("starts"))
        .with_columns(segment=pl.col("starts").cum_sum())
        .group_by("segment")
        .agg(
            pl.col("user_id").first(),
            pl.col("video_id").first(),
            pl.col("position_s").min().alias("start_s"),
            pl.col("position_s").max().alias("end_s"),
        )
        .filter(pl.col("end_s") > pl.col("start_s"))
    )
    return Counter(segments.select(*pair, "start_s", "end_s").iter_rows())


def duckdb_batch(path: Path, gap_s: float, threads: int | None = None) -> Segments:
    """The same rules as SQL window functions in DuckDB (on ``threads``, default all)."""
    ranks = ", ".join(f"('{kind}', {rank})" for kind, rank in KIND_RANK.items())
    closing = f"({KIND_RANK['pause']}, {KIND_RANK['stop']})"
    query = f"""
        WITH ranks(kind, rank) AS (VALUES {ranks}),
        events AS (
            SELECT DISTINCT user_id, video_id, ts, rank, position_s::DOUBLE AS position_s
            FROM read_ndjson(?, columns = {{user_id: 'VARCHAR', video_id: 'VARCHAR',
                 ts: 'BIGINT', kind: 'VARCHAR', position_s: 'DOUBLE'}})
            JOIN ranks ON ranks.kind = coalesce(read_ndjson.kind, 'heartbeat')),
        paired AS (
            SELECT *, lag(ts) OVER w AS prev_ts, lag(rank) OVER w AS prev_rank,
                   lag(position_s) OVER w AS prev_position
            FROM events
            WINDOW w AS (PARTITION BY user_id, video_id ORDER BY ts, rank, position_s)),
        flagged AS (
            SELECT *, coalesce(ts - prev_ts <= {gap_s * 1000}
                      AND prev_rank NOT IN {closing} AND rank <> {KIND_RANK["seek"]}
                      AND abs((position_s - prev_position) - (ts - prev_ts) / 1000) <= {gap_s},
                      false) AS joins
            FROM paired),
        numbered AS (
            SELECT *, sum((NOT joins AND rank NOT IN {closing})::INTEGER) OVER (
                PARTITION BY user_id, video_id ORDER BY ts, rank, position_s) AS segment
            FROM flagged
            WHERE joins OR rank NOT IN {closing})
        SELECT user_id, video_id, min(position_s) AS start_s, max(position_s) AS end_s
        FROM numbered GROUP BY user_id, video_id, segment HAVING max(position_s) > min(position_s)
    """
    config = {"threads": threads} if threads else {}
    with duckdb.connect(config=config) as connection:
        return Counter(connection.execute(query, [str(path)]).fetchall())


def python_batch(path: Path, gap_s: float) -> Segments:
    """The same rules in plain Python: one pass into a dict of items per key, then a
    walk over each key's sorted items."""
    decoder = msgspec.json.Decoder(Heartbeat)
    by_key: dict[tuple[str, str], list[tuple[int, int, float]]] = defaultdict(list)
    with path.open("rb") as lines:
        for line in lines:
            e = decoder.decode(line)
            by_key[e.user_id, e.video_id].append((e.ts, KIND_RANK[e.kind], e.position_s))
    segments: Segments = Counter()
    for (user, video), items in by_key.items():
        segments.update((user, video, start, end) for start, end in watched(items, gap_s))
    return segments


def watched(items: Iterable[tuple[int, int, float]], gap_s: float) -> list[tuple[float, float]]:
    """The segments of one key's events by the sessionizer's rules, duplicates dropped."""
    segments: list[list[float]] = []  # [low, high] positions, zero-length ones included
    joinable = False  # whether the next event may extend the last segment
    last_ms, last_position = 0, 0.0
    for ms, rank, position in sorted(set(items)):
        drift = (position - last_position) - (ms - last_ms) / 1000
        if joinable and ms - last_ms <= gap_s * 1000 and rank != SEEK and abs(drift) <= gap_s:
            low, high = segments[-1]
            segments[-1] = [min(low, position), max(high, position)]
        else:
            segments.append([position, position])
        joinable = rank < PAUSE
        last_ms, last_position = ms, position
    return [(low, high) for low, high in segments if high > low]


BASELINES = {
    "Polars batch": polars_batch,
    "DuckDB batch": duckdb_batch,
    "DuckDB batch, 1 thread": partial(duckdb_batch, threads=1),
    "plain Python": python_batch,
}
