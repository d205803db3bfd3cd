"""Windowed aggregations built from the operator library (`kappaflow.ops`) against
DuckDB's SQL over the same records: the real 1.usa.gov sample of the clicks app (an
hour, 3,560 records), repeated `HOURS` times, each copy an hour later than the one
before (the feed's own rate and links, for days). Windows of 10 minutes every minute:
"trending now", refreshed each minute; a click is in 10 windows (per minute alone most
links have no click or one).

- by URL: clicks per target URL ``u``, keep-alive lines dropped by a `Filter` step.
  URLs span partitions, so the operator keeps no state and writes partial counts that
  the store adds up (``emit='update'``).
- by link: per link hash ``g`` (the stream's key), clicks and distinct countries, from
  keyed state, each window written once when the watermark passes it
  (``emit='final'``); at the end, an empty batch whose watermark passes every window,
  as after an idle period.

Each processor runs as a worker calls it: the records partitioned by the stream's key
as ingest does, in batches of `batch_max_events` per partition (a worker catching up),
each with its partition's watermark, a poll taking one batch of each partition; the
worker's collector thresholds; the state's encoding for each commit counted, the
store's write not (it is a figure of its own for by URL: each poll committed to SQLite
in one transaction, as a worker does). DuckDB: the records in an in-memory table (the
load timed apart), each query on one thread with its rows fetched into Python, as the
operator's rows are. Every side must give the same counts, or the benchmark fails.

Figures are records per second of the process's CPU (each side runs on one core; on a
shared machine the CPU time moves less than the wall clock), the best of `ROUNDS`, the
sides taken in turn."""

from __future__ import annotations

import gc
import gzip
import tempfile
import time
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from common import Figure
from rich.console import Console

from kappaflow.app import App, Batch, Processor, Rows
from kappaflow.apps.clicks.app import Click
from kappaflow.apps.clicks.app import create_app as clicks_app
from kappaflow.apps.clicks.demo import sample_path
from kappaflow.log.partitioner import partitions_for
from kappaflow.ops import Aggregate, Filter, Hopping, Pipeline, count, distinct
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import PartitionCommit

if TYPE_CHECKING:  # the bench extra's, imported when the benchmark runs
    import duckdb

HOURS = 100
"""Copies of the sample's hour: 356,000 records at scale 1."""
ROUNDS = 3
WINDOW = Hopping(size_ms=600_000, every_ms=60_000)
console = Console()


class UrlClicks(msgspec.Struct):
    u: str
    start_ms: int
    clicks: int


class LinkWindow(msgspec.Struct):
    g: str
    start_ms: int
    clicks: int
    countries: int


def is_click(click: Click) -> bool:
    return click.heartbeat is None


BY_URL = Aggregate(WINDOW, UrlClicks, by="u", clicks=count())
BY_LINK = Aggregate(WINDOW, LinkWindow, by="g", emit="final", clicks=count(),
                    countries=distinct("c"))  # fmt: skip
EVERY = WINDOW.every_ms
PANES = f"SELECT {{}}, t * 1000 - t * 1000 % {EVERY} AS pane FROM clicks WHERE _heartbeat_ IS NULL"
QUERIES = {
    "by URL": f"""
        SELECT u, pane - hop * {EVERY} AS start_ms, count(*)
        FROM ({PANES.format("u")}), range({WINDOW.size_ms // EVERY}) AS hops(hop)
        GROUP BY u, start_ms""",
    # A missing country counts as one value, as the operator's set counts None.
    "by link": f"""
        SELECT g, pane - hop * {EVERY} AS start_ms, count(*),
               count(DISTINCT c) + bool_or(c IS NULL)::INTEGER
        FROM ({PANES.format("g, c")}), range({WINDOW.size_ms // EVERY}) AS hops(hop)
        GROUP BY g, start_ms""",
}
"""Each click in the windows that hold it, as `Hopping.starts` gives them: those that
start at its pane (the span of ``every_ms`` it is in) and at the panes before, as many
as a window spans."""
Counts = dict[tuple[Any, ...], Any]
"""Each window's measures, by (group, window start)."""


def run(scale: float) -> list[Figure]:
    settings = Settings.load({})
    stream = clicks_app(settings).streams[0]
    apps = {name: App("bench", [stream], [], {stream.name: Pipeline(Filter(is_click)).to(op)})
            for name, op in (("by URL", BY_URL), ("by link", BY_LINK))}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        path = Path(tmp) / "clicks.ndjson"
        records = write_clicks(path, max(1, round(HOURS * scale)))
        polls = batches(path, settings)
        gc.set_threshold(200_000, 20, 100)  # as a worker runs (stream/worker.py)
        gc.freeze()  # the whole input, which no worker holds at once, is not scanned again
        import duckdb

        database = duckdb.connect(config={"threads": 1})
        _, load_s = cpu_timed(lambda: database.execute(
            "CREATE TABLE clicks AS SELECT * FROM read_json(?, format='newline_delimited')",
            [str(path)]))  # fmt: skip
        console.print(f"DuckDB loaded {records:,} records in {load_s:.2f} CPU s")
        best: dict[str, float] = {}
        for round_ in range(ROUNDS):
            for name, app in apps.items():
                expected, duck_s = cpu_timed(lambda name=name: windows(database, QUERIES[name]))
                counts, operator_s = operate(app, polls)
                _check_same(counts, expected, name)
                measured = {name: operator_s, f"DuckDB {name}": duck_s}
                if name == "by URL":
                    stored, measured[f"{name} + SQLite"] = commit(app, polls, settings, tmp)
                    _check_same(stored, expected, f"{name}, in SQLite")
                for side, seconds in measured.items():
                    best[side] = min(best.get(side, seconds), seconds)
                console.print(f"round {round_ + 1}, {name}: {len(expected):,} windows; "
                              + ", ".join(f"{side} {records / s:,.0f}"
                                          for side, s in measured.items())
                              + " records/CPU s")  # fmt: skip
        database.close()
        gc.unfreeze()
    rate = {side: records / seconds for side, seconds in best.items()}
    duck = "DuckDB SQL, 1 thread"
    return [
        Figure("ops: clicks per URL, hopping 10 min/1 min", rate["by URL"], "records/CPU s",
               duck, rate["DuckDB by URL"]),
        Figure("ops: clicks per URL + SQLite commits", rate["by URL + SQLite"],
               "records/CPU s", duck, rate["DuckDB by URL"]),
        Figure("ops: per link, count + distinct, final", rate["by link"], "records/CPU s",
               duck, rate["DuckDB by link"]),
        Figure("ops baseline: DuckDB load into memory", records / load_s, "records/CPU s"),
    ]  # fmt: skip


def write_clicks(path: Path, hours: int) -> int:
    """Write the sample ``hours`` times to ``path`` as NDJSON, each copy an hour later
    (``t``, and the keep-alives' ``_heartbeat_``); return how many records."""
    sample = _decode(gzip.decompress(sample_path().read_bytes()))
    encode, replace = msgspec.json.encode, msgspec.structs.replace
    with path.open("wb") as out:
        for hour in range(hours):
            shift = 3600 * hour
            out.writelines(
                encode(replace(click, t=click.t + shift, heartbeat=(
                    None if click.heartbeat is None else click.heartbeat + shift))) + b"\n"
                for click in sample
            )  # fmt: skip
    console.print(f"{len(sample) * hours:,} records ({hours} hours), "
                  f"{path.stat().st_size / 2**20:,.0f} MiB of NDJSON")  # fmt: skip
    return len(sample) * hours


def batches(path: Path, settings: Settings) -> list[list[Batch]]:
    """The records as a worker's polls: each a batch of up to `batch_max_events` of
    each partition that has records left, with the partition's watermark (its highest
    event time less the allowed lateness)."""
    stream = clicks_app(settings).streams[0]
    events = _decode(path.read_bytes())
    times = stream.times_ms(events)
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    partitioned: dict[int, tuple[list[Any], list[int]]] = {}
    for partition, event, time_ms in zip(
        partitions_for([getattr(e, stream.key) for e in events], settings.partitions),
        events, times, strict=True,
    ):  # fmt: skip
        columns = partitioned.setdefault(partition, ([], []))
        columns[0].append(event)
        columns[1].append(time_ms)
    for _, times in partitioned.values():  # each against the highest time before it
        highs = accumulate(times[:-1], max)
        if any(t < high - lateness_ms for t, high in zip(times[1:], highs, strict=True)):
            raise AssertionError("a record is late: a worker would drop it")
    size, polls = settings.batch_max_events, []
    highest = dict.fromkeys(partitioned, 0)
    for at in range(0, max(len(events) for events, _ in partitioned.values()), size):
        poll = []
        for partition, (events, times) in sorted(partitioned.items()):
            if at < len(events):
                chunk = times[at : at + size]
                highest[partition] = max(highest[partition], *chunk)
                offsets = list(range(at, at + len(chunk)))
                poll.append(Batch(partition, offsets, events[at : at + size], chunk,
                                  highest[partition] - lateness_ms))  # fmt: skip
        polls.append(poll)
    return polls


def operate(app: App, polls: list[list[Batch]]) -> tuple[Counts, float]:
    """The windows' measures from the app's processor, and the CPU seconds of its
    batches and of encoding its state for each commit."""
    processor = app.processors[app.streams[0].name]
    states = {batch.partition: processor.initial_state() for batch in polls[0]}
    counts: Counts = {}
    seconds = 0.0
    for batch in [*(batch for poll in polls for batch in poll), *_ends(polls)]:
        started = time.process_time()
        output = processor.process(states[batch.partition], batch)
        states[batch.partition] = state = output.state
        processor.encode(state), processor.changed_keys(state)
        seconds += time.process_time() - started
        _fold(counts, output.rows)
    return counts, seconds


def commit(
    app: App, polls: list[list[Batch]], settings: Settings, tmp: str
) -> tuple[Counts, float]:
    """The windows' counts as a fresh SQLite store holds them after the app's processor
    committed each poll in one transaction, and the CPU seconds of processing and
    committing."""
    stream = app.streams[0]
    processor: Processor[Any] = app.processors[stream.name]
    group, table = app.group(stream), app.all_tables[0]
    with tempfile.TemporaryDirectory(dir=tmp) as data_dir:
        store = open_store(settings.replace(data_dir=data_dir))
        store.create_tables(app.all_tables)
        claims = store.claim(group, sorted(b.partition for b in polls[0]), "bench")
        states = {partition: processor.initial_state() for partition in claims}
        started = time.process_time()
        for poll in polls:
            rows: Rows = {}
            commits = []
            for batch in poll:
                output = processor.process(states[batch.partition], batch)
                states[batch.partition] = state = output.state
                for name, table_rows in output.rows.items():
                    rows.setdefault(name, []).extend(table_rows)
                commits.append(PartitionCommit(
                    batch.partition, claims[batch.partition].generation, batch.offsets[-1] + 1,
                    processor.encode(state), processor.changed_keys(state)))  # fmt: skip
            store.commit(group, commits, rows)
        seconds = time.process_time() - started
        stored = {(u, start): n for u, start, n in store.query(
            f"SELECT {', '.join(table.column_names)} FROM {table.name}")}  # fmt: skip
        store.close()
    return stored, seconds


def windows(database: duckdb.DuckDBPyConnection, query: str) -> Counts:
    """The windows' measures as DuckDB's ``query`` gives them."""
    return {(group, start): measures[0] if len(measures) == 1 else tuple(measures)
            for group, start, *measures in database.execute(query).fetchall()}  # fmt: skip


def _decode(lines: bytes) -> list[Click]:
    """The clicks of NDJSON ``lines``, decoded in one call as a worker decodes a batch."""
    return msgspec.json.Decoder(list[Click]).decode(b"[" + b",".join(lines.splitlines()) + b"]")


def _ends(polls: list[list[Batch]]) -> list[Batch]:
    """An empty batch of each partition whose watermark passes every window."""
    end = max(max(batch.times_ms) for poll in polls for batch in poll) + WINDOW.size_ms
    return [Batch(batch.partition, [], [], [], end) for batch in polls[0]]


def _fold(counts: Counts, rows: Rows) -> None:
    """Add the rows' measures into ``counts``: partial counts (by URL) add up; a final
    window (by link) comes once."""
    for table_rows in rows.values():
        for group, start, *measures in table_rows:
            key = (group, start)
            if len(measures) == 1:
                counts[key] = counts.get(key, 0) + measures[0]
            elif key in counts:
                raise AssertionError(f"window {key} written twice")
            else:
                counts[key] = tuple(measures)


def _check_same(got: Counts, expected: Counts, name: str) -> None:
    if got != expected:
        differ = [key for key in got.keys() | expected.keys() if got.get(key) != expected.get(key)]
        sample = [(key, got.get(key), expected.get(key)) for key in differ[:5]]
        raise AssertionError(f"{name}: {len(differ):,} windows differ from DuckDB's, e.g. "
                             f"(window, operator, DuckDB) {sample}")  # fmt: skip


def cpu_timed(action: Callable[[], Any]) -> tuple[Any, float]:
    """``action()`` and the CPU seconds of the process it took."""
    started = time.process_time()
    result = action()
    return result, time.process_time() - started
