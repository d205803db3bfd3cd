"""Instructions per heartbeat on the sessionize workload (a tenth of it at scale 1),
counted by valgrind's callgrind in the main thread: the worker path (log + worker +
SQLite, one process) against the plain-Python pass and DuckDB on one thread. A tenth
of the viewers, each viewing as long, read a tenth of a batch at a time: the worker
then reads as many batches in a key's life as on the whole workload. A count
repeats within 0.1% whatever else the machine does, where timings here move by 20%,
so a change of a few percent shows. Each side also runs without its work (imports,
opening the log, store or database) and that count is subtracted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
from bench_sessionize import append_file, consume, duckdb_batch, python_batch, write_heartbeats
from common import Figure
from rich.console import Console

from kappaflow.settings import Settings

SHARE = 0.1
"""Of the sessionize workload's viewers and of a worker's batches: 202,039 heartbeats
at scale 1."""
WORKER = "log+worker+SQLite"
SIDES = (WORKER, "plain Python", "DuckDB batch, 1 thread")
console = Console()


def run(scale: float) -> list[Figure]:
    if shutil.which("valgrind") is None:
        console.print("valgrind is not installed (Debian: apt install valgrind): no counts")
        return []
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        events = write_heartbeats(_heartbeats(tmp), scale, SHARE)
        append_file(_settings(tmp), _heartbeats(tmp))
        per_event = {}
        for side in SIDES:
            with console.status(f"counting the instructions of {side}"):
                setup = _count(side, tmp, work=False)
                per_event[side] = (_count(side, tmp, work=True) - setup) / events
            console.print(f"{side}: {per_event[side]:,.0f} instructions per heartbeat")
    worker = per_event[WORKER]
    return [
        Figure(f"instructions per heartbeat: {WORKER}", worker, "instr", side, per_event[side])
        for side in SIDES[1:]
    ]


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
    path, gap_s = _heartbeats(tmp), settings.session_gap_s
    if side == WORKER:
        if work:
            consume(settings)
        else:  # the worker's setup: claim, restore, create tables; no records read
            consume(settings, partitions=[])
    elif side == "plain Python":
        if work:
            python_batch(path, gap_s)
    elif work:
        duckdb_batch(path, gap_s, threads=1)
    else:
        duckdb.connect(config={"threads": 1}).close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3] == "work")
