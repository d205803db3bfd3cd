"""The harness of ``kappaflow demo APP``: each app's demo runs against a stack of
``kappaflow up`` in a temporary directory, with workers scaled on lag from one; and
what a demo waits for."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console

from kappaflow.app import load_apps
from kappaflow.log import open_log
from kappaflow.metrics import partition_lag
from kappaflow.scale.supervisor import Autoscaler
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.up import Stack, StackFailed, free_port, one_machine

console = Console(stderr=True)
LATENESS_S = 120
IDLE_S = 10
LAG_THRESHOLD = 10_000


def run_in_stack(
    demo: Callable[[Settings, Stack], bool], port: int | None, data_dir: str | None
) -> bool:
    """``demo(settings, stack)``'s verdict, against a stack started for it with one worker
    and stopped after it; False if the stack fails."""
    with tempfile.TemporaryDirectory(prefix="kappaflow-demo-") as temporary:
        settings = Settings.load(
            overrides={
                "data_dir": data_dir or temporary,
                "port": port or free_port(),
                # A demo plays event time faster than real time (the video demo's about
                # 30x), so a request delayed by one second arrives 30 s late in event time.
                "allowed_lateness_s": LATENESS_S,
                # Close sessions and windows soon after the load ends, so the reports are
                # complete.
                "idle_timeout_s": IDLE_S,
                # Scale on lag within the demo's minute: decide every second, and scale
                # down after 8 s of lower recommendations instead of 5 minutes.
                "autoscale": True,
                "polling_interval_s": 1.0,
                "lag_threshold": LAG_THRESHOLD,
                "scale_down_stabilization_s": 8.0,
            }
        )
        stack = Stack(settings, quiet=True)
        try:
            stack.start(1)
            return demo(settings, stack)
        except StackFailed as failure:
            console.print(f"[red]the stack failed: {failure} (logs in {stack.logs})")
            return False
        finally:
            with console.status("stopping the stack"):
                stack.stop()


def wait_for_backlog(settings: Settings, stack: Stack, timeout_s: float) -> float:
    """Seconds until every partition is processed to the end of the log."""
    started = time.perf_counter()
    log, store = open_log(settings), open_store(settings)
    apps = load_apps(settings)
    try:
        with console.status("waiting for the workers to drain the backlog"):
            while time.perf_counter() - started < timeout_s:
                if sum(lag for *_, lag in partition_lag(apps, log, store)) == 0:
                    break
                stack.check()
                time.sleep(0.1)
        return time.perf_counter() - started
    finally:
        log.close()
        store.close()


@dataclass
class Scaling:
    """The autoscaler of ``kappaflow up``, ticking in a thread of the demo."""

    settings: Settings
    stack: Stack
    stop: threading.Event = field(default_factory=threading.Event)
    history: list[tuple[float, int, int]] = field(default_factory=list)

    def run(self) -> None:
        log, store = open_log(self.settings), open_store(self.settings)
        settings = one_machine(self.settings)
        autoscaler = Autoscaler(settings, load_apps(settings), log, store, self.stack)
        while not self.stop.wait(self.settings.polling_interval_s):
            autoscaler.tick()
        self.history = autoscaler.history

    def report(self) -> None:
        if not self.history:
            return
        changes, last = [], None
        for t, workers, _ in self.history:
            if workers != last:
                changes.append(f"{workers} at {t:.0f} s")
                last = workers
        peak = max(self.history, key=lambda h: h[2])
        console.print(f"workers over time: {' -> '.join(changes)}")
        threshold = self.settings.scaling.lag_threshold
        console.print(f"maximum lag reached: {peak[2]:,} events at {peak[0]:.0f} s "
                      f"(lag threshold {threshold:,} per worker)")  # fmt: skip
