"""bench/run.py keeps the latest figures of every benchmark in one JSON file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import psutil

from kappaflow.testing import wait_until

BENCH = Path(__file__).resolve().parents[2] / "bench"
spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
assert spec is not None and spec.loader is not None
bench_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_run)

MODULES = ["bench_commits", "bench_reports", "bench_stores"]


def _figure(benchmark: str, name: str, value: float) -> dict[str, object]:
    return {"benchmark": benchmark, "name": name, "value": value}


def test_a_run_of_some_benchmarks_replaces_only_their_figures(tmp_path: Path) -> None:
    latest = tmp_path / "latest.json"
    earlier = [
        _figure("bench_stores", "PostgreSQL commits", 1.0),
        _figure("bench_commits", "commits: worker", 2.0),
        _figure("bench_reports", "royalty report", 3.0),
        _figure("bench_reports", "a figure no longer measured", 4.0),
        {"name": "a figure of a version that named no benchmark", "value": 5.0},
        _figure("bench_gone", "a benchmark since removed", 6.0),
    ]
    latest.write_text(json.dumps(earlier))
    now = [_figure("bench_reports", "royalty report", 7.0)]

    merged = bench_run.merge_results(latest, now, MODULES)

    assert merged == [earlier[1], now[0], earlier[0]]


def test_a_file_that_is_not_json_gives_way_to_the_new_figures(tmp_path: Path) -> None:
    latest = tmp_path / "latest.json"
    latest.write_text('[{"benchmark": "bench_stores", "na')
    now = [_figure("bench_commits", "commits: worker", 1.0)]

    assert bench_run.merge_results(latest, now, MODULES) == now
    assert bench_run.merge_results(tmp_path / "missing.json", now, MODULES) == now


def test_an_interrupted_run_stops_every_process_it_started() -> None:
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    tree = psutil.Process(child.pid)
    wait_until(lambda: tree.children(), 10, "the grandchild started")
    grandchild = tree.children()[0]
    bench_run.stop_descendants(grace_s=2)
    assert child.wait(5) is not None
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
