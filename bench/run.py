"""Run every benchmark in bench/ (modules named ``bench_*.py``), or those named, print
one table and write it as JSON to bench/results/latest.json. A run of some benchmarks
replaces only their figures there: the file holds the latest figures of each.

Each module has ``run(scale: float) -> list[Figure]``. A figure is compared with a
baseline measured in the same run, so the ratio holds on a noisy machine. Each module
runs in a fresh process, so that none inherits another's memory or threads. Stopped
by Ctrl-C or SIGTERM, it stops every process the benchmark started, however deep.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Figure  # noqa: E402

console = Console(width=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply workload sizes")
    parser.add_argument("--figures-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    if args.figures_to:  # one benchmark, in the process `_run_alone` started
        try:
            figures = importlib.import_module(f"bench_{args.names[0]}").run(args.scale)
        except KeyboardInterrupt:
            sys.exit(130)  # what it started is stopped; the parent says so
        args.figures_to.write_text(json.dumps([asdict(figure) for figure in figures]))
        return
    modules = sorted(path.stem for path in HERE.glob("bench_*.py"))
    unknown = [name for name in args.names if f"bench_{name}" not in modules]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are: "
                     + ", ".join(m.removeprefix("bench_") for m in modules))  # fmt: skip
    chosen = [m for m in modules if not args.names or m.removeprefix("bench_") in args.names]
    figures: list[Figure] = []
    results: list[dict[str, object]] = []
    context = {"scale": args.scale, "commit": _commit(), "python": platform.python_version(),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}  # fmt: skip
    for name in chosen:
        console.rule(name)
        started = time.perf_counter()
        try:
            measured = _run_alone(name, args.scale)
        except KeyboardInterrupt:
            console.print(f"[yellow]stopped during {name}: nothing of this run is written")
            sys.exit(130)
        console.print(f"{name} took {time.perf_counter() - started:.1f} s")
        figures.extend(measured)
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results += [{"benchmark": name, "measured_at": when, **context, **f.as_dict()}
                    for f in measured]  # fmt: skip
    table = Table(title="kappaflow benchmarks")
    for column in ("name", "figure", "unit", "baseline", "baseline figure", "ratio"):
        left = column in ("name", "baseline")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for f in figures:
        table.add_row(
            f.name,
            _number(f.value),
            f.unit,
            f.baseline or "",
            _number(f.baseline_value) if f.baseline_value is not None else "",
            f"{f.ratio:.2f}" if f.ratio is not None else "",
        )
    console.print(table)
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    kept = merge_results(out, results, modules)
    out.write_text(json.dumps(kept, indent=2) + "\n")
    console.print(f"written to {out}")


def merge_results(
    path: Path, results: list[dict[str, object]], modules: list[str]
) -> list[dict[str, object]]:
    """``results`` with the figures in ``path`` of the benchmarks they leave out (those
    of earlier versions, without a benchmark name, are dropped), in the order of
    ``modules``."""
    ran = {result["benchmark"] for result in results}
    try:
        earlier = json.loads(path.read_text()) if path.exists() else []
    except json.JSONDecodeError as error:
        console.print(f"[yellow]{path} is not JSON ({error}): its figures are dropped")
        earlier = []
    kept = [r for r in earlier if r.get("benchmark") in modules and r["benchmark"] not in ran]
    return sorted([*kept, *results], key=lambda result: modules.index(result["benchmark"]))


def _commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes), if it is one."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return described.stdout.strip() or None


def _run_alone(name: str, scale: float) -> list[Figure]:
    """The figures of module ``name``, run in a process of its own."""
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-figures-") as tmp:
        out = Path(tmp) / "figures.json"
        command = [sys.executable, __file__, name.removeprefix("bench_"), "--scale", str(scale),
                   "--figures-to", str(out)]  # fmt: skip
        child = subprocess.Popen(command)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            stop_descendants()
            raise
        if code:
            raise RuntimeError(f"{name} failed (exit status {code})")
        return [Figure(**figure) for figure in json.loads(out.read_text())]


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops as Ctrl-C does: the code running unwinds, and cleans up what it
    started."""
    raise KeyboardInterrupt


def stop_descendants(grace_s: float = 120.0) -> None:
    """Stop every process this one started, in whatever session, as Ctrl-C stops those
    of a terminal: SIGTERM to each (a benchmark then stops what it started and removes
    its files), SIGKILL to those still running ``grace_s`` later."""
    descendants = psutil.Process().children(recursive=True)
    console.print(f"[yellow]stopping {len(descendants)} processes (at most {grace_s:.0f} s)")
    for process in descendants:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
    for process in psutil.wait_procs(descendants, timeout=grace_s)[1]:
        with suppress(psutil.NoSuchProcess):
            process.kill()


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    main()
