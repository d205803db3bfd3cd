"""``kappaflow scale simulate``: replay a load curve through the real policy and a
capacity model (each worker processes at most ``capacity`` events/s), and report
workers and lag over time, as a table and a picture."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy

from kappaflow.errors import MissingExtra
from kappaflow.scale.policy import PolicyState, decide
from kappaflow.settings import Scaling

Curve = Callable[[float], float]
HOUR = 3600.0


def daily(base: float) -> tuple[Curve, float]:
    """A day: trough of 0.1 x ``base`` at 4 a.m., rising to the peak at 8 p.m., falling
    back overnight."""

    def rate(t: float) -> float:
        hour = (t / HOUR) % 24
        rising = (hour - 4) % 24 <= 16
        phase = ((hour - 4) % 24) / 16 if rising else ((hour - 20) % 24) / 8
        level = (
            (1 - math.cos(math.pi * phase)) / 2 if rising else (1 + math.cos(math.pi * phase)) / 2
        )
        return base * (0.1 + 0.9 * level)

    return rate, 24 * HOUR


def surge(base: float) -> tuple[Curve, float]:
    """``base`` for an hour, except 10 x ``base`` for 10 minutes from minute 20."""
    return (lambda t: base * 10 if 1200 <= t < 1800 else base), HOUR


def sawtooth(base: float) -> tuple[Curve, float]:
    """Ramps from 0 to 2 x ``base`` every 10 minutes, for an hour."""
    return (lambda t: base * 2 * ((t % 600) / 600)), HOUR


def from_csv(path: Path) -> tuple[Curve, float]:
    """A CSV of ``time_s,events_per_s`` rows (a header line is skipped), interpolated."""
    points = []
    with path.open() as file:
        for row in csv.reader(file):
            try:
                points.append((float(row[0]), float(row[1])))
            except (ValueError, IndexError):
                continue
    if len(points) < 2:
        raise ValueError(f"{path}: needs at least two rows of time_s,events_per_s")
    points.sort()
    times, rates = [p[0] for p in points], [p[1] for p in points]
    return (lambda t: float(numpy.interp(t, times, rates))), points[-1][0]


SHAPES = {"daily": daily, "surge": surge, "sawtooth": sawtooth}


@dataclass
class Step:
    time_s: float
    load: float
    workers: int
    lag: float
    processed: float


def simulate(
    curve: Curve,
    duration_s: float,
    capacity: float,
    policy: Scaling,
    partitions: int = 8,
    step_s: float = 15.0,
    start_workers: int = 1,
    latency_s: float = 1.0,
) -> list[Step]:
    """Every ``step_s``: events arrive at the curve's rate, the workers process what
    they can, then the policy sees the offsets and sets the workers for the next step
    (never more than the partitions unless idle consumers are allowed). Events of the
    last ``latency_s`` are still in flight (polled, in a batch not yet committed), so
    lag never drops below load x latency, as on a real pipeline."""
    state, workers = PolicyState(), start_workers
    appended = done = 0.0
    steps = []
    t = 0.0
    while t < duration_s:
        load = curve(t)
        appended += load * step_s
        ready = max(0.0, appended - done - load * latency_s)
        processed = min(ready, workers * capacity * step_s)
        done += processed
        end = {p: math.floor(appended / partitions) for p in range(partitions)}
        committed = {p: math.floor(done / partitions) for p in range(partitions)}
        steps.append(Step(t, load, workers, appended - done, processed / step_s))
        decision = decide(t, {"load": (end, committed)}, workers, policy, state)
        state = decision.state
        workers = decision.desired
        if not policy.allow_idle_consumers:
            workers = min(workers, partitions)
        t += step_s
    return steps


def plot(steps: list[Step], capacity: float, title: str, path: Path) -> None:
    """Load and capacity, workers, and lag over time, in one PNG; `MissingExtra` without
    matplotlib (the pictures extra)."""
    try:
        import matplotlib
    except ModuleNotFoundError as missing:
        raise MissingExtra("the simulator's picture", "pictures") from missing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [s.time_s / HOUR for s in steps]
    figure, (load, workers, lag) = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    load.plot(hours, [s.load for s in steps], label="load (events/s)")
    load.plot(hours, [s.workers * capacity for s in steps], label="capacity of the workers",
              linestyle="--")  # fmt: skip
    load.set_ylabel("events/s")
    load.legend(loc="upper left")
    workers.step(hours, [s.workers for s in steps], where="post", color="tab:green")
    workers.set_ylabel("workers")
    lag.plot(hours, [s.lag for s in steps], color="tab:red")
    lag.set_ylabel("lag (events)")
    lag.set_xlabel("hours")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def report(steps: list[Step], rows: int) -> None:
    """A table of ``rows`` evenly spaced steps, and a summary."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="simulated autoscaling")
    for column in ("time", "load (events/s)", "workers", "lag (events)"):
        table.add_column(column, justify="right")
    every = max(1, len(steps) // rows)
    for s in steps[::every]:
        clock = f"{int(s.time_s // 3600):02d}:{int(s.time_s % 3600 // 60):02d}"
        table.add_row(clock, f"{s.load:,.0f}", str(s.workers), f"{s.lag:,.0f}")
    console = Console()
    console.print(table)
    span = steps[1].time_s - steps[0].time_s if len(steps) > 1 else 0
    worker_hours = sum(s.workers for s in steps) * span / HOUR
    peak = max(steps, key=lambda s: s.lag)
    console.print(
        f"max lag {peak.lag:,.0f} events at {peak.time_s / 60:,.0f} min; "
        f"workers {min(s.workers for s in steps)}..{max(s.workers for s in steps)}; "
        f"{worker_hours:,.1f} worker-hours"
    )
