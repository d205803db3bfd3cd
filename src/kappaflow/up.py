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
import time
from pathlib import Path

import httpx

from kappaflow.errors import KappaflowError
from kappaflow.metrics import MULTIPROCESS_VARIABLE
from kappaflow.settings import Settings
from kappaflow.signals import stop_flag

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


class Stack:
    def __init__(self, settings: Settings, quiet: bool = False) -> None:
        """``quiet``: children's output goes to ``<data_dir>/logs/`` instead of the terminal."""
        self.settings = settings
        self.url = f"http://{settings.host}:{settings.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, tuple[list[int], subprocess.Popen[bytes]]] = {}
        self.quiet = quiet
        data = Path(settings.data_dir).resolve()
        self.logs = data / "logs"
        if quiet:
            self.logs.mkdir(parents=True, exist_ok=True)
        metrics_dir = data / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env = {**os.environ, **settings.to_environ(), MULTIPROCESS_VARIABLE: str(metrics_dir)}

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

    def start(self, ready_timeout_s: float = 30) -> None:
        s = self.settings
        self.server = self._spawn("serve", "--role", "ingest", "--role", "query",
                                  "--host", s.host, "--port", str(s.port))  # fmt: skip
        log.warning("started server (pid %d) for ingest and queries", self.server.pid)
        self.wait_ready(ready_timeout_s)
        for number, share in enumerate(shares(s.partitions, s.workers)):
            self._start_worker(number, share)
        log.warning("ready: %s (ingest, queries, /metrics, /openapi.json)", self.url)

    def _start_worker(self, number: int, share: list[int]) -> None:
        process = self._spawn("worker", "--partitions", ",".join(map(str, share)))
        self.workers[number] = (share, process)
        log.warning("started worker %d (pid %d) for partitions %s", number, process.pid, share)

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
        assert self.server is not None
        if self.server.poll() is not None:
            raise StackFailed(f"the server exited with code {self.server.returncode}")
        for number, (share, process) in list(self.workers.items()):
            if process.poll() is not None:
                log.warning("worker %d (pid %d) exited with code %s; restarting it",
                            number, process.pid, process.returncode)  # fmt: skip
                self._start_worker(number, share)

    def stop(self) -> None:
        """Server first, so nothing new arrives; then the workers, which commit and exit."""
        if self.server is not None and self.server.poll() is None:
            log.warning("stopping the server")
            _terminate(self.server)
        for _, process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.workers.values():
            _wait(process)
        log.warning("stopped")


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


def run_up(settings: Settings) -> int:
    """Run the stack until SIGTERM or Ctrl-C; returns the exit code."""
    stopping = stop_flag()
    stack = Stack(settings)
    try:
        stack.start()
        while not stopping():
            stack.check()
            time.sleep(0.2)
    except StackFailed as failure:
        log.error("%s", failure)
        return 1
    finally:
        stack.stop()
    return 0
