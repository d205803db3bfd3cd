"""Instructions per heartbeat, counted by valgrind's callgrind in the main thread, on
two workloads. A count repeats within 0.1% whatever else the machine does, where
timings here move by 20%, so a change of a few percent shows.

- The sessionize workload at a tenth (of the viewers, each viewing as long, read a
  tenth of a batch at a time, so a key lives through as many batches as on the whole
  workload): the worker path (log + worker + SQLite, one process) against the
  plain-Python pass and DuckDB on one thread. Each side also runs without its work
  (imports, opening the log, store or database) and that count is subtracted.
- The commits workload at a tenth of its viewers: a worker that keeps up, committing
  1,400 events at a time, against the same worker reading full batches. Only the last
  quarter of the heartbeats is counted: each side runs once to the end of the third
  quarter (restore, and the views folded again) and once to the end, and the
  difference is taken.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
from bench_commits import commit_settings
from bench_sessionize import (
    append_events,
    append_file,
    consume,
    duckdb_batch,
    python_batch,
    write_heartbeats,
)
from common import START_MS, Figure
from rich.console import Console

from kappaflow.apps.video.app import VideoSettings
from kappaflow.apps.video.sim import heartbeats
from kappaflow.settings import Settings

SHARE = 0.1
"""Of the sessionize workload's viewers and of a worker's batches: 202,039 heartbeats
at scale 1."""
WORKER = "log+worker+SQLite"
SIDES = (WORKER, "plain Python", "DuckDB batch, 1 thread")
COMMIT_VIEWERS = 10_000
COMMIT_EVENTS = 200_000
"""100 s of event time of ``COMMIT_VIEWERS``, whatever the scale: the first half is
consumed before counting, so the watermark releases heartbeats as under steady load."""
SMALL, FULL = "worker, 1,400 a commit", "worker, full batches"
COMMITS = {SMALL: 175, FULL: 20_000}
"""Records of a partition per commit, 8 partitions: 1,400 a commit, as a worker that
keeps up commits, or the whole counted quarter in one."""
console = Console()


def run(scale: float) -> list[Figure]:
    if shutil.which("valgrind") is None:
        console.print("valgrind is not installed (Debian: apt install valgrind): no counts")
        return []
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        events = write_heartbeats(_heartbeats(tmp), scale, SHARE)
        append_file(_settings(tmp), _heartbeats(tmp))
        per_event = {side: _per_event(side, tmp, events) for side in SIDES}
        counted = _prepare_commits(tmp)
        small, full = (_per_event(side, tmp, counted) for side in (SMALL, FULL))
    worker = per_event[WORKER]
    return [
        *(Figure(f"instructions per heartbeat: {WORKER}", worker, "instr", side,
                 per_event[side]) for side in SIDES[1:]),
        Figure(f"instructions per heartbeat: {SMALL}", small, "instr", FULL, full),
    ]  # fmt: skip


def _per_event(side: str, tmp: str, events: int) -> float:
    with console.status(f"counting the instructions of {side}"):
        setup = _count(side, tmp, work=False)
        per_event = (_count(side, tmp, work=True) - setup) / events
    console.print(f"{side}: {per_event:,.0f} instructions per heartbeat")
    return per_event


def _prepare_commits(tmp: str) -> int:
    """Two copies of the commits workload's log and store: the first half consumed,
    then the third quarter appended (``setup``), and the fourth too (``work``). Returns
    the heartbeats of the fourth quarter."""
    stream = heartbeats(COMMIT_VIEWERS, 0, START_MS, jitter_ms=1_000)
    events = list(itertools.islice(stream, COMMIT_EVENTS))
    half, three_quarters = len(events) // 2, len(events) * 3 // 4
    with console.status(f"{COMMIT_VIEWERS:,} viewers: the first half of their heartbeats"):
        settings = commit_settings(_commits(tmp, "work"), max(COMMITS.values()))
        append_events(settings, events[:half], 2_000)
        consume(settings)
        append_events(settings, events[half:three_quarters], 2_000)
        shutil.copytree(_commits(tmp, "work"), _commits(tmp, "setup"))
        append_events(settings, events[three_quarters:], 2_000)
    return len(events) - three_quarters


def _commits(tmp: str, name: str) -> str:
    return str(Path(tmp) / f"commits-{name}")


def _settings(tmp: str) -> Settings:
    batch = round(Settings.load({}).batch_max_events * SHARE)
    return Settings.load({}, {"data_dir": str(Path(tmp) / "store"), "batch_max_events": batch})


def _heartbeats(tmp: str) -> Path:
    return Path(tmp) / "heartbeats.ndjson"


def _count(side: str, tmp: str, work: bool) -> int:
    """Instructions of the main thread of a child process running ``side`` (its work,
    or its setup only). Only the main thread: idle pool threads (OpenBLAS, DuckDB's)
    spin for as long as the scheduler lets them, which no two runs repeat."""
    out = Path(tmp) / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
               f"--callgrind-out-file={out}", sys.executable, __file__, side, tmp,
               "work" if work else "setup"]  # fmt: skip
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(command, capture_output=True, env=environment, check=True)
    main_thread = Path(f"{out}-01")
    found = re.search(r"^summary: (\d+)$", main_thread.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no count in {main_thread} for {side}")
    for written in Path(tmp).glob("callgrind.out-*"):
        written.unlink()
    return int(found.group(1))


def _child(side: str, tmp: str, work: bool) -> None:
    settings = _settings(tmp)
    path, gap_s = _heartbeats(tmp), settings.app("video", VideoSettings).session_gap_s
    if side == WORKER:
        if work:
            consume(settings)
        else:  # the worker's setup: claim, restore, create tables; no records read
            consume(settings, partitions=[])
    elif side in COMMITS:
        run_dir = _commits(tmp, "run")
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(_commits(tmp, "work" if work else "setup"), run_dir)
        consume(commit_settings(run_dir, COMMITS[side]))
    elif side == "plain Python":
        if work:
            python_batch(path, gap_s)
    elif work:
        duckdb_batch(path, gap_s, threads=1)
    else:
        duckdb.connect(config={"threads": 1}).close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3] == "work")
