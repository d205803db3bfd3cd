"""``kappaflow up``: the whole stack on one machine. One process serves ingest and
queries on one port (it is the log's one writer); worker processes share the
partitions. Children that die are restarted; SIGTERM or Ctrl-C stop the server first
(in-flight requests are answered), then the workers (each finishes its batch)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from kappaflow.errors import KappaflowError
from kappaflow.settings import MULTIPROCESS_VARIABLE, Settings
from kappaflow.signals import stop_flag
from kappaflow.stream.shares import ShareFile

log = logging.getLogger("kappaflow.up")
STOP_TIMEOUT_S = 60


class StackFailed(KappaflowError):
    """A process of the stack could not start or kept failing."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def shares(partitions: int, workers: int) -> list[list[int]]:
    """Partitions split as evenly as possible among at most ``partitions`` workers."""
    count = max(1, min(workers, partitions))
    return [list(range(partitions))[i::count] for i in range(count)]


@dataclass
class WorkerProcess:
    share: list[int]
    """The partitions it is to own."""
    process: subprocess.Popen[bytes]
    file: ShareFile


class Stack:
    def __init__(self, settings: Settings, quiet: bool = False) -> None:
        """``quiet``: children's output goes to ``<data_dir>/logs/`` instead of the terminal."""
        self.settings = settings
        self.url = f"http://{settings.host}:{settings.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, WorkerProcess] = {}
        self._lock = threading.RLock()
        """Held while workers start or stop (the autoscaler may run in a thread)."""
        self.quiet = quiet
        data = Path(settings.data_dir).resolve()
        self.logs = data / "logs"
        if quiet:
            self.logs.mkdir(parents=True, exist_ok=True)
        self.shares = data / "workers"
        """Each worker's share file (see `kappaflow.stream.shares`)."""
        shutil.rmtree(self.shares, ignore_errors=True)
        self.shares.mkdir(parents=True)
        shared = os.environ.get(MULTIPROCESS_VARIABLE) or str(prepare_metrics_dir(settings))
        self.env = {**os.environ, **settings.to_environ(), MULTIPROCESS_VARIABLE: shared}

    def _spawn(self, *arguments: str) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "kappaflow",
            *arguments,
            "--data-dir",
            self.settings.data_dir,
        ]
        if not self.quiet:
            return subprocess.Popen(command, env=self.env, start_new_session=True)
        with (self.logs / f"{arguments[0]}.log").open("ab") as output:
            return subprocess.Popen(
                command, env=self.env, stdout=output, stderr=output, start_new_session=True
            )

    def start(self, workers: int, serve: bool = True, ready_timeout_s: float = 30) -> None:
        s = self.settings
        if serve:
            self.server = self._spawn("serve", "--role", "ingest", "--role", "query",
                                      "--host", s.host, "--port", str(s.port))  # fmt: skip
            log.warning("started server (pid %d) for ingest and queries", self.server.pid)
            self.wait_ready(ready_timeout_s)
        self.resize(workers)
        if serve:
            log.warning("ready: %s (dashboard, ingest, queries, /metrics, /openapi.json)", self.url)

    def size(self) -> int:
        return len(self.workers)

    def resize(self, workers: int) -> None:
        """Run ``workers`` workers with the partitions shared anew, one owner to a
        partition at a time: the workers that go away finish their batch and exit, and
        those that stay let go of what they lose, before any of it is claimed again. A
        worker that stays runs on with the state of what it keeps, and new workers start
        up (with nothing to own yet, if others are letting go) meanwhile."""
        with self._lock:
            wanted = shares(self.settings.partitions, workers) if workers else []
            self._stop_workers([number for number in self.workers if number >= len(wanted)])
            losing = []
            for number, worker in self.workers.items():
                if self._hand(number, [p for p in worker.share if p in wanted[number]]):
                    losing.append(number)
            for number in range(len(self.workers), len(wanted)):
                self._start_worker(number, [] if losing else wanted[number])
            self._await_handovers(losing)
            for number, share in enumerate(wanted):
                self._hand(number, share)

    def _start_worker(self, number: int, share: list[int]) -> None:
        file = ShareFile(self.shares / str(number))
        file.offer_anew(share)
        process = self._spawn("worker", "--share-file", str(file.path))
        self.workers[number] = WorkerProcess(share, process, file)
        log.warning("started worker %d (pid %d) for partitions %s", number, process.pid, share)

    def _hand(self, number: int, share: list[int]) -> bool:
        """Ask a running worker to own ``share`` from its next poll; returns whether
        that changes its share."""
        worker = self.workers[number]
        if share == worker.share:
            return False
        worker.file.offer(share)
        worker.share = share
        log.warning("worker %d (pid %d) to own partitions %s", number, worker.process.pid, share)
        return True

    def _await_handovers(self, numbers: list[int]) -> None:
        """Wait until each of these workers owns no more than its share; stop one that
        does not say so in time (`check` starts it again)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        waiting = [self.workers[number] for number in numbers]
        while waiting := [w for w in waiting if w.process.poll() is None and not _owns_share(w)]:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        for worker in waiting:
            log.warning("pid %d did not take its share within %s s; stopping it",
                        worker.process.pid, STOP_TIMEOUT_S)  # fmt: skip
            _terminate(worker.process)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.server is not None
            if self.server.poll() is not None:
                raise StackFailed(f"the server exited with code {self.server.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise StackFailed(f"the server was not ready at {self.url} within {timeout_s:.0f} s")

    def check(self) -> None:
        """Restart workers that died; fail if the server died."""
        if self.server is not None and self.server.poll() is not None:
            raise StackFailed(f"the server exited with code {self.server.returncode}")
        with self._lock:
            for number, worker in list(self.workers.items()):
                process = worker.process
                if process.poll() is not None:
                    log.warning("worker %d (pid %d) exited with code %s; restarting it",
                                number, process.pid, process.returncode)  # fmt: skip
                    self._start_worker(number, worker.share)

    def stop(self) -> None:
        """Server first, so nothing new arrives; then the workers, which commit and exit."""
        if self.server is not None and self.server.poll() is None:
            log.warning("stopping the server")
            _terminate(self.server)
        with self._lock:
            self._stop_workers(list(self.workers))
        log.warning("stopped")

    def _stop_workers(self, numbers: list[int]) -> None:
        """Stop these workers, all at once: each finishes its batch and exits."""
        stopping = [self.workers.pop(number).process for number in numbers]
        for process in stopping:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in stopping:
            _wait(process)


def _owns_share(worker: WorkerProcess) -> bool:
    owned = worker.file.owned()
    return owned is not None and set(owned) <= set(worker.share)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    _wait(process)


def _wait(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop within %d s; killing it", process.pid, STOP_TIMEOUT_S)
        process.kill()
        process.wait()


def prepare_metrics_dir(settings: Settings) -> Path:
    """An empty directory for the processes' shared metrics. Set it as
    ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is first imported."""
    directory = Path(settings.data_dir).resolve() / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def one_machine(settings: Settings) -> Settings:
    """Autoscaling settings for workers that share this machine: at most one worker
    per CPU, since more would only take turns on the CPUs (and on SQLite's write lock)
    and pay a restore of their state on every resize."""
    cpus = os.cpu_count() or 1
    if settings.max_replicas > cpus:
        log.info("autoscaling to at most %d workers, one per CPU of this machine", cpus)
        return settings.replace(max_replicas=cpus)
    return settings


def run_up(settings: Settings, serve: bool = True) -> int:
    """Run the stack (with ``serve``: the HTTP server too) until SIGTERM or Ctrl-C,
    scaling workers on lag when ``settings.autoscale``; returns the exit code."""
    from kappaflow.app import load_apps
    from kappaflow.log import open_log
    from kappaflow.scale.supervisor import Autoscaler
    from kappaflow.store import open_store

    stopping = stop_flag()
    stack = Stack(settings)
    autoscaler = None
    try:
        if settings.autoscale:
            store, apps = open_store(settings), load_apps(settings)
            for app in apps:
                store.create_tables(app.all_tables)
            autoscaler = Autoscaler(one_machine(settings), apps, open_log(settings), store, stack)
        stack.start(max(settings.min_replicas, 1) if settings.autoscale else settings.workers,
                    serve=serve)  # fmt: skip
        next_tick = 0.0
        while not stopping():
            stack.check()
            if autoscaler is not None and time.monotonic() >= next_tick:
                autoscaler.tick()
                next_tick = time.monotonic() + settings.polling_interval_s
            time.sleep(0.2)
    except KappaflowError as failure:  # a process that kept failing, a store it cannot use
        log.error("%s", failure)
        return 1
    finally:
        stack.stop()
    return 0
