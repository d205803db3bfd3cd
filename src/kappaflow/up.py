"""``kappaflow up``: the whole stack on one machine. One process serves ingest and
queries on one port (it is the log's one writer); worker processes share the
partitions. The server and workers that die are restarted (again and again after a
pause that doubles); SIGTERM or Ctrl-C stop the server first (in-flight requests are answered),
then the workers (each finishes its batch). The children end with ``up`` however it
ends, SIGKILL included; the embedded log's retention is applied from here."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from kappaflow.errors import KappaflowError
from kappaflow.settings import MULTIPROCESS_VARIABLE, Settings
from kappaflow.signals import die_with_parent, stop_flag
from kappaflow.stream.shares import ShareFile

if TYPE_CHECKING:
    from kappaflow.app import App
    from kappaflow.log.base import Log
    from kappaflow.scale.supervisor import Autoscaler
    from kappaflow.store.base import Store

log = logging.getLogger("kappaflow.up")
STOP_TIMEOUT_S = 60
RESTART_PAUSE_S, MAX_RESTART_PAUSE_S = 0.5, 30.0
"""A worker that exits again is restarted after 0.5 s, then twice as long each time."""
RAN_FINE_S = 60.0
"""A worker that ran this long before it exited is restarted at once, as a first exit."""


class StackFailed(KappaflowError):
    """A process of the stack could not start or kept failing."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    (port,) = free_ports(1, host)
    return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nothing listens on right now: each is held while the
    next is picked (ports picked one after another may repeat)."""
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]


def shares(partitions: int, workers: int) -> list[list[int]]:
    """Partitions split as evenly as possible among at most ``partitions`` workers."""
    count = max(1, min(workers, partitions))
    return [list(range(partitions))[i::count] for i in range(count)]


@dataclass(kw_only=True)
class Child:
    """A process of the stack, and when it starts again once it exited."""

    process: subprocess.Popen[bytes]
    started: float = 0.0
    exits: int = 0
    """How many times in a row the process in this place exited soon after its start."""
    restart_at: float | None = None
    """Once it exited: when it is started again."""

    def due(self, name: str, now: float) -> bool:
        """Whether the process, which exited, is to start again at ``now``: at once the
        first time, then, while it exits again within `RAN_FINE_S`, after
        `RESTART_PAUSE_S` doubling up to `MAX_RESTART_PAUSE_S` (a process that cannot
        start, or a partition that makes a worker exit on every batch, does not spin)."""
        if self.restart_at is None:
            ran = now - self.started
            self.exits = 1 if ran >= RAN_FINE_S else self.exits + 1
            pause = restart_pause(self.exits)
            self.restart_at = now + pause
            log.warning("%s (pid %d) exited with code %s after %.1f s; restarting it in %g s "
                        "(exit %d in a row)", name, self.process.pid, self.process.returncode,
                        ran, pause, self.exits)  # fmt: skip
        return now >= self.restart_at


@dataclass(kw_only=True)
class WorkerProcess(Child):
    share: list[int]
    """The partitions it is to own."""
    file: ShareFile


class WorkerPool:
    """Worker processes sharing the partitions of the app versions that ``arguments``
    give ``kappaflow worker``: one owner to a partition at a time."""

    def __init__(self, stack: Stack, name: str, arguments: Sequence[str], shares: Path) -> None:
        self.stack = stack
        self.name = name
        self.arguments = tuple(arguments)
        self.shares = shares
        """Each worker's share file (see `kappaflow.stream.shares`)."""
        shutil.rmtree(self.shares, ignore_errors=True)
        self.shares.mkdir(parents=True)
        self.workers: dict[int, WorkerProcess] = {}

    def size(self) -> int:
        return len(self.workers)

    def resize(self, workers: int) -> None:
        """Run ``workers`` workers with the partitions shared anew, one owner to a
        partition at a time: the workers that go away finish their batch and exit, and
        those that stay let go of what they lose, before any of it is claimed again. A
        worker that stays runs on with the state of what it keeps, and new workers start
        up (with nothing to own yet, if others are letting go) meanwhile."""
        with self.stack.lock:
            wanted = shares(self.stack.settings.partitions, workers) if workers else []
            self.stop([number for number in self.workers if number >= len(wanted)])
            losing = []
            for number, worker in self.workers.items():
                if self._hand(number, [p for p in worker.share if p in wanted[number]]):
                    losing.append(number)
            for number in range(len(self.workers), len(wanted)):
                self._start_worker(number, [] if losing else wanted[number])
            self._await_handovers(losing)
            for number, share in enumerate(wanted):
                self._hand(number, share)

    def restart(self) -> None:
        """Stop the workers and start as many again (to run other app versions)."""
        with self.stack.lock:
            size = self.size()
            self.stop(list(self.workers))
            self.resize(size)

    def _start_worker(self, number: int, share: list[int], exits: int = 0) -> None:
        file = ShareFile(self.shares / str(number))
        file.offer_anew(share)
        process = self.stack.spawn("worker", "--share-file", str(file.path), *self.arguments)
        self.workers[number] = WorkerProcess(process=process, started=self.stack.clock(),
                                             exits=exits, share=share, file=file)  # fmt: skip
        log.warning("started %s %d (pid %d) for partitions %s", self._what, number, process.pid,
                    share)  # fmt: skip

    @property
    def _what(self) -> str:
        return f"worker of {self.name}" if self.name else "worker"

    def _hand(self, number: int, share: list[int]) -> bool:
        """Ask a running worker to own ``share`` from its next poll; returns whether
        that changes its share."""
        worker = self.workers[number]
        if share == worker.share:
            return False
        worker.file.offer(share)
        worker.share = share
        log.warning("%s %d (pid %d) to own partitions %s", self._what, number,
                    worker.process.pid, share)  # fmt: skip
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

    def check(self, now: float) -> None:
        """Restart the workers that exited, when each is due (`Child.due`)."""
        for number, worker in list(self.workers.items()):
            if worker.process.poll() is not None and worker.due(f"{self._what} {number}", now):
                self._start_worker(number, worker.share, worker.exits)

    def stop(self, numbers: list[int]) -> None:
        """Stop these workers, all at once: each finishes its batch and exits."""
        stopping = [self.workers.pop(number).process for number in numbers]
        for process in stopping:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in stopping:
            _wait(process)


class Stack:
    """The server and the worker pools: ``pool`` runs the apps' live versions, and
    ``pools`` each other version deployed (`kappaflow.deployments`)."""

    def __init__(
        self, settings: Settings, quiet: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``quiet``: children's output goes to ``<data_dir>/logs/`` instead of the terminal.
        ``clock`` times the restarts."""
        self.settings = settings
        self.clock = clock
        self.url = settings.url
        self.server: Child | None = None
        self.lock = threading.RLock()
        """Held while workers start or stop (the autoscaler may run in a thread)."""
        self.quiet = quiet
        data = Path(settings.data_dir).resolve()
        self.logs = data / "logs"
        if quiet:
            self.logs.mkdir(parents=True, exist_ok=True)
        self.shares = data / "workers"
        self.pool = WorkerPool(self, "", ["--live"], self.shares)
        self.pools: dict[str, WorkerPool] = {}
        """Each deployed version that is not live, by its `App.ref`."""
        shared = os.environ.get(MULTIPROCESS_VARIABLE) or str(prepare_metrics_dir(settings))
        # The workers serve no endpoints of their own: the server's /metrics adds up theirs.
        self.env = {**os.environ, **settings.to_environ(), MULTIPROCESS_VARIABLE: shared,
                    "KAPPAFLOW_WORKER_PORT": "0"}  # fmt: skip
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="kappaflow-spawner")
        """The one thread that starts the children, alive until `stop`: a child's
        parent-death signal comes when the thread that started it ends, and the
        autoscaler may run in a thread that ends before the stack does (the demo's)."""

    @property
    def workers(self) -> dict[int, WorkerProcess]:
        """The live versions' workers."""
        return self.pool.workers

    def spawn(self, *arguments: str) -> subprocess.Popen[bytes]:
        """Start ``kappaflow ARGUMENTS`` in a session of its own (Ctrl-C reaches only
        ``up``, which stops the children in order), sent SIGTERM if ``up`` ends first."""
        command = [
            sys.executable,
            "-m",
            "kappaflow",
            *arguments,
            "--data-dir",
            self.settings.data_dir,
        ]
        options = {"env": self.env, "start_new_session": True,
                   "preexec_fn": die_with_parent(signal.SIGTERM)}  # fmt: skip
        if not self.quiet:
            return self._spawner.submit(subprocess.Popen, command, **options).result()
        with (self.logs / f"{arguments[0]}.log").open("ab") as output:
            return self._spawner.submit(
                subprocess.Popen, command, stdout=output, stderr=output, **options
            ).result()

    def start(self, workers: int, serve: bool = True, ready_timeout_s: float = 30) -> None:
        if serve:
            self._start_server()
            self.wait_ready(ready_timeout_s)
        self.resize(workers)
        if serve:
            log.warning("ready: %s (dashboard, ingest, queries, /metrics, /openapi.json)", self.url)

    def size(self) -> int:
        return self.pool.size()

    def resize(self, workers: int) -> None:
        """`WorkerPool.resize` of the live versions' pool."""
        self.pool.resize(workers)

    def run_versions(self, deployed: Sequence[str], workers: int) -> list[WorkerPool]:
        """A pool for each of the ``deployed`` versions (not live), of ``workers``
        workers if new; the pools of versions no longer among them stop. Returns the
        pools started."""
        started = []
        with self.lock:
            for ref in [ref for ref in self.pools if ref not in deployed]:
                pool = self.pools.pop(ref)
                pool.stop(list(pool.workers))
                log.warning("stopped the workers of %s", ref)
            for ref in [ref for ref in deployed if ref not in self.pools]:
                pool = self.pools[ref] = WorkerPool(self, ref, ["--version", ref],
                                                    self.shares / ref)  # fmt: skip
                pool.resize(workers)
                started.append(pool)
        return started

    def _start_server(self, exits: int = 0) -> None:
        s = self.settings
        process = self.spawn("serve", "--role", "ingest", "--role", "query",
                             "--host", s.host, "--port", str(s.port))  # fmt: skip
        self.server = Child(process=process, started=self.clock(), exits=exits)
        log.warning("started server (pid %d) for ingest and queries", process.pid)

    def wait_ready(self, timeout_s: float) -> None:
        """Until the server answers: it has opened the log and serves ingest. Not until
        it is ready for queries too: during a store outage it is not, and ingest must
        not wait for the store."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.server is not None
            if (code := self.server.process.poll()) is not None:
                raise StackFailed(f"the server exited with code {code}")
            try:
                # Its own child on this machine: that it answers is the check, not its name.
                answer = httpx.get(f"{self.url}/healthz", timeout=1, verify=False)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise StackFailed(f"the server was not ready at {self.url} within {timeout_s:.0f} s")

    def check(self) -> None:
        """Restart the server and the workers that exited, when each is due (`Child.due`).
        Meanwhile the others go on: workers process what the log holds while the server
        is away, and clients retry what it could not take."""
        with self.lock:
            now = self.clock()
            server = self.server
            if (server is not None and server.process.poll() is not None
                    and server.due("the server", now)):  # fmt: skip
                self._start_server(server.exits)
            for pool in [self.pool, *self.pools.values()]:
                pool.check(now)

    def stop(self) -> None:
        """Server first, so nothing new arrives; then the workers, which commit and exit."""
        if self.server is not None and self.server.process.poll() is None:
            log.warning("stopping the server")
            _terminate(self.server.process)
        with self.lock:
            for pool in [self.pool, *self.pools.values()]:
                pool.stop(list(pool.workers))
        self._spawner.shutdown()
        log.warning("stopped")


def restart_pause(exits: int) -> float:
    """Seconds before a worker that exited ``exits`` times in a row starts again."""
    return 0.0 if exits <= 1 else min(RESTART_PAUSE_S * 2 ** (exits - 2), MAX_RESTART_PAUSE_S)


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
    if settings.scaling.max_replicas > cpus:
        log.info("autoscaling to at most %d workers, one per CPU of this machine", cpus)
        return settings.replace(max_replicas=cpus)
    return settings


def refuse_if_taken(settings: Settings) -> None:
    """Raise naming the other process when one already writes this data directory's
    embedded log (an ``up`` running on it, or a ``kappaflow ingest``), or listens on the
    port: the stack's server could not start, and another's answers to the readiness
    probe would pass for its own."""
    if settings.log == "embedded":
        from kappaflow.log.embedded import check_unwritten

        check_unwritten(settings.log_path)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((settings.host, settings.port))
        except OSError as error:
            raise StackFailed(f"cannot listen on {settings.host}:{settings.port}: "
                              f"{error.strerror}; stop what listens there, or choose "
                              "another --port") from None  # fmt: skip


def apply_retention(settings: Settings, apps: Sequence[App], the_log: Log) -> None:
    """Apply the log's retention (``log_retention_bytes``, ``log_retention_hours``) to
    every app stream: only what every app reading it has processed may go."""
    readers: dict[str, list[str]] = {}
    for app in apps:
        for stream in app.streams:
            readers.setdefault(stream.name, []).append(app.group(stream))
    max_age_s = settings.log_retention_hours * 3600
    for topic, groups in readers.items():
        try:
            deleted = the_log.apply_retention(topic, groups, settings.log_retention_bytes,
                                              max_age_s)  # fmt: skip
        except (OSError, KappaflowError) as failure:
            log.warning("could not apply retention to %s: %s", topic, failure)
            continue
        if deleted:
            log.info("retention deleted %d segment(s) of %s", deleted, topic)


def run_up(settings: Settings, serve: bool = True) -> int:
    """Run the stack (with ``serve``: the HTTP server too) until SIGTERM or Ctrl-C,
    with a pool of workers for the apps' live versions and one for each other version
    deployed, each scaled on its own lag when ``settings.autoscale``; applying the
    log's retention every ``log_retention_check_s``; returns the exit code. Imports
    prometheus_client only once this process shares the stack's metrics directory."""
    try:
        if serve:
            refuse_if_taken(settings)
    except KappaflowError as failure:
        log.error("%s", failure)
        return 1
    os.environ[MULTIPROCESS_VARIABLE] = str(prepare_metrics_dir(settings))
    from kappaflow.app import load_apps
    from kappaflow.log import open_log
    from kappaflow.store import open_store

    stopping = stop_flag()
    stack = Stack(settings)
    try:
        apps, the_log, store = load_apps(settings), open_log(settings), open_store(settings)
        first = max(settings.scaling.min_replicas, 1) if settings.autoscale else settings.workers
        versions = Versions(settings, apps, the_log, store, stack, first)
        versions.follow()
        stack.start(first, serve=serve)
        next_tick = next_retention = 0.0
        while not stopping():
            stack.check()
            now = time.monotonic()
            if now >= next_tick:
                versions.follow()
                versions.tick()
                next_tick = time.monotonic() + settings.polling_interval_s
            if now >= next_retention:
                apply_retention(settings, versions.running, the_log)
                next_retention = time.monotonic() + settings.log_retention_check_s
            time.sleep(0.2)
    except KappaflowError as failure:  # a process that kept failing, a store it cannot use
        log.error("%s", failure)
        return 1
    finally:
        stack.stop()
    return 0


class Versions:
    """The app versions a stack runs, as the store records them: the live ones in the
    stack's `Stack.pool`, each other one in a pool of its own, each pool with its own
    autoscaler (when ``settings.autoscale``)."""

    def __init__(
        self,
        settings: Settings,
        apps: Sequence[App],
        the_log: Log,
        store: Store,
        stack: Stack,
        workers: int,
    ) -> None:
        """``apps``: the settings'; ``workers``: how many a new pool starts with."""
        from kappaflow.scale.supervisor import Autoscaler

        self.settings, self.apps, self.log, self.store = settings, apps, the_log, store
        self.stack, self.workers = stack, workers
        self.running: list[App] = list(apps)
        self._built: list[App] = []
        """The versions read last (their tables created)."""
        self.live: list[str] | None = None
        """The live versions' refs, once read."""
        self.autoscalers: dict[str, Autoscaler] = {}
        if settings.autoscale:
            self.autoscalers[""] = Autoscaler(one_machine(settings), apps, the_log, store,
                                              stack.pool)  # fmt: skip

    def follow(self) -> None:
        """Record the settings' apps the store does not know yet; read which versions
        run and which are live; restart the live versions' workers when those changed
        (a promotion), and start or stop the other pools. While the store cannot say,
        everything runs on as it is."""
        from kappaflow.deployments import current
        from kappaflow.scale.supervisor import Autoscaler

        try:
            self.running, serving = current(self.settings, self.apps, self.store, self.log,
                                            self._built)  # fmt: skip
            self._built = self.running
        except KappaflowError as failure:
            log.warning("cannot read the app versions (%s); running on as before", failure)
            return
        refs = sorted(app.ref for app in serving)
        if self.live is not None and refs != self.live:
            log.warning("live versions now %s: restarting their workers", ", ".join(refs))
            self.stack.pool.restart()
        self.live = refs
        if main := self.autoscalers.get(""):
            main.apps = serving
        others = [app for app in self.running if app.ref not in refs]
        for pool in self.stack.run_versions([app.ref for app in others], self.workers):
            log.warning("started %d worker(s) for %s", pool.size(), pool.name)
        if self.settings.autoscale:
            for app in others:
                if app.ref not in self.autoscalers:
                    self.autoscalers[app.ref] = Autoscaler(
                        one_machine(self.settings), [app], self.log, self.store,
                        self.stack.pools[app.ref], pool_name=app.ref, exported=False)  # fmt: skip
            for ref in [ref for ref in self.autoscalers if ref and ref not in self.stack.pools]:
                del self.autoscalers[ref]

    def tick(self) -> None:
        """Each pool's autoscaler decides on its versions' lag."""
        for autoscaler in self.autoscalers.values():
            autoscaler.tick()
