"""The whole stack end to end on this machine: ``kappaflow up`` (embedded log, SQLite,
workers scaled on lag) in a new temporary directory for each step, loaded over HTTP by
the load generator in a process of its own, at target rates that double until one is
not sustained, then bisected. A step is sustained when ingest accepts the target rate
(within 5%) and the backlog does not grow over the step's second half; over that half,
the demo's probe measures the time from ingest to queryable and psutil samples every
process's CPU, memory and disk writes every 0.5 s."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from ctypes import c_longlong
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

import httpx
import msgspec
import psutil
from common import Figure
from rich.console import Console
from rich.table import Table

from kappaflow.app import load_apps
from kappaflow.apps.video.app import Heartbeat
from kappaflow.apps.video.demo import Probe
from kappaflow.apps.video.loadgen import simulated, start_for
from kappaflow.apps.video.sim import hb_ms
from kappaflow.client.loadgen import Batch, LoadGenerator, Summary
from kappaflow.log import open_log
from kappaflow.metrics import partition_lag
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.sqlite_wal import wal_bytes
from kappaflow.up import free_port

STEP_S = 240
"""Each step's second half (2 minutes) is judged: a sustained rate keeps the backlog
bounded for at least that long after the stack has settled."""
GOAL_RATE = 100_000
FIRST_RATE = 12_500
"""Doubled three times, the goal rate: the goal's p99 is measured at that rate."""
TOP_RATE = 200_000
GOAL_P99_MS = 1_000
BISECTIONS = 3
TOLERANCE = 0.05
"""A step is sustained when the accepted rate is within 5% of the target..."""
GROWTH_S = 1.0
"""...and the backlog grew by less than this many seconds of the target over its
second half (least-squares slope of the samples)."""
SAMPLE_S = 0.5
VIEWERS = 100_000
"""Concurrent viewers: the peak of the design's reference workload."""
POOL_EVENTS = 2_000_000
"""Simulated heartbeats generated once and replayed in laps: the simulator makes only
about 30,000 a second on one core, too slow to run during the steps."""
BATCH = 2_000
"""Events per request. The load generator keeps 4 requests in flight, and a request
waits for its group commit (an fsync per partition): at its default of 500, a round
trip caps ingest at about 20,000 events/s while the workers write to the same disk."""
STOP_S = 90
OUTSIDE = ("load generator", "bench (probe, sampler)")
"""Processes measured beside the stack's."""
WRITERS = ("server", "worker")
console = Console(width=130)
spawn = multiprocessing.get_context("spawn")


def run(scale: float) -> list[Figure]:
    seconds = max(10.0, STEP_S * scale)
    console.print(f"{os.cpu_count()} CPUs; each step {seconds:.0f} s; {VIEWERS:,} viewers")
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        steps = search(simulated_pool(Path(tmp), scale), seconds)
    print_steps(steps)
    best = highest(steps)
    figures = [Figure("end to end: highest sustained rate", best.target if best else 0.0,
                      "events/s", "goal", GOAL_RATE)]  # fmt: skip
    if best is None:
        return figures
    goal = next((s for s in steps if s.target == GOAL_RATE and s.sustained), None)
    if goal is not None:
        p50, p99 = goal.percentiles()
        figures += [
            Figure(f"end to end: p50 ingest->queryable at {GOAL_RATE:,}/s", p50, "ms"),
            Figure(f"end to end: p99 ingest->queryable at {GOAL_RATE:,}/s", p99, "ms",
                   "goal", GOAL_P99_MS),
        ]  # fmt: skip
    p50, p99 = best.percentiles()
    figures += [
        Figure("end to end: p50 ingest->queryable at the highest rate", p50, "ms"),
        Figure("end to end: p99 ingest->queryable at the highest rate", p99, "ms"),
    ]
    cpus = float(os.cpu_count() or 1)
    stack = sum(cores for name, cores in best.cores.items() if name not in OUTSIDE)
    figures.append(Figure("end to end: CPU of the stack", stack, "cores", "CPUs", cpus))
    for name, cores in best.cores.items():
        figures.append(Figure(f"end to end: CPU of {name}", cores, "cores", "CPUs", cpus))
    for name, written in best.written_mb_s.items():
        figures.append(Figure(f"end to end: disk writes of {name}", written, "MB/s"))
    for name, rss in best.peak_rss_mb.items():
        figures.append(Figure(f"end to end: peak RSS of {name}", rss, "MB"))
    return figures


def simulated_pool(directory: Path, scale: float) -> Path:
    """The viewers' heartbeats for the load generator, in ``directory``."""
    pool = directory / "pool.msgpack"
    with console.status("simulating the viewers' heartbeats"):
        events = int(max(POOL_EVENTS * scale, 5 * VIEWERS))
        simulator = spawn.Process(target=write_pool, args=(pool, events))
        simulator.start()
        simulator.join()
    if simulator.exitcode:
        raise RuntimeError(f"the simulator exited with {simulator.exitcode}")
    return pool


def highest(steps: list[Step]) -> Step | None:
    """The sustained step of the highest rate."""
    return max((s for s in steps if s.sustained), key=lambda s: s.target, default=None)


def write_pool(path: Path, events: int) -> None:
    """Heartbeats of ``VIEWERS`` simulated viewers in delivery order, with the load
    generator's 1 s of jitter and 0.1% of client retries, as a msgpack `Pool`."""
    pool = list(itertools.islice(simulated(VIEWERS, 0), events))
    path.write_bytes(msgspec.msgpack.encode(Pool.of(pool)))


class Pool(NamedTuple):
    """Heartbeats, each encoded once as the JSON around its position and its time, the
    numbers a lap shifts: joining the pieces around a lap's numbers takes 1.4 µs an
    event, against 3.4 for shifting and encoding each event anew, CPU the load
    generator would take from the stack on the same cores."""

    heads: list[str]
    middles: list[str]
    tails: list[str]
    positions: list[float]
    times: list[int]

    @classmethod
    def of(cls, events: list[Heartbeat]) -> Pool:
        heads, middles, tails = zip(*map(_pieces, events), strict=True)
        positions = [event.position_s for event in events]
        return cls(list(heads), list(middles), list(tails), positions, list(map(hb_ms, events)))


def _pieces(event: Heartbeat) -> tuple[str, str, str]:
    """An event's JSON before its position, between its position and its time, and
    after its time."""
    json = msgspec.json.encode(msgspec.structs.replace(event, position_s=0.5, ts=-1)).decode()
    head, position, rest = json.partition('"position_s":0.5')
    middle, ts, tail = rest.partition('"ts":-1')
    assert position and ts, json
    return f'{head}"position_s":', f'{middle}"ts":', tail


def laps(pool: Pool, start_ms: int, size: int) -> Iterator[Batch]:
    """The pool over and over from ``start_ms`` in batches of ``size``, each lap later
    than the one before by the pool's span, in event time and in playback position
    alike. A viewer still playing at the pool's end sent its last heartbeat within a
    heartbeat interval of it, and its first within one of the pool's start, so its
    session runs on into the next lap. A longer shift in time closed about half the
    sessions at once at the end of every lap (a gap over the session gap); the same
    position in the next lap made 90% of the sessions seek back once a lap, so that
    their segments piled up. Neither happens in steady traffic."""
    first, span = min(pool.times), max(pool.times) - min(pool.times)
    for lap in itertools.count():
        shift, ahead_s = start_ms - first + lap * span, lap * span / 1000
        for i in range(0, len(pool.times), size):
            batch = slice(i, i + size)
            times = pool.times[batch]
            parts = zip(pool.heads[batch], pool.positions[batch], pool.middles[batch], times,
                        pool.tails[batch], strict=True)  # fmt: skip
            body = ",".join([f"{h}{p + ahead_s!r}{m}{t + shift}{e}" for h, p, m, t, e in parts])
            yield Batch(f"[{body}]".encode(), len(times), max(times) + shift)


def send(
    url: str, rate: float, seconds: float, pool: str, start_ms: int, latest: c_longlong,
    results: Connection,
) -> None:  # fmt: skip
    """The load generator's process: the pool's laps at ``rate`` for ``seconds``;
    ``latest`` follows the highest event time ingest has accepted."""
    events = msgspec.msgpack.decode(Path(pool).read_bytes(), type=Pool)
    generator = LoadGenerator(url, "heartbeats", rate, laps(events, start_ms, BATCH))
    done = threading.Event()

    def mirror() -> None:
        while not done.wait(SAMPLE_S / 10):
            latest.value = generator.summary.latest_ms

    threading.Thread(target=mirror, daemon=True).start()
    results.send(generator.run(seconds))
    done.set()


class Up:
    """``kappaflow up`` on a free port in an existing data directory, its output in
    ``<data_dir>/up.log``. On exit: SIGTERM (it stops its server and workers), then
    SIGKILL to any process of its tree still running after ``STOP_S``."""

    def __init__(self, settings: Settings, servers: Sequence[int] = ()) -> None:
        """``servers``: pids of the servers the stack uses beside its own processes (a
        Kafka broker, a PostgreSQL server), measured as part of it."""
        self.settings = settings
        self.servers = [psutil.Process(pid) for pid in servers]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: dict[int, psutil.Process] = {}

    def __enter__(self) -> Up:
        data = Path(self.settings.data_dir)
        self.output = data / "up.log"
        command = [sys.executable, "-m", "kappaflow", "up", "--data-dir", str(data),
                   "--port", str(self.port)]  # fmt: skip
        with self.output.open("wb") as output:
            env = {**os.environ, **self.settings.to_environ()}
            self.process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        self.root = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    self.log, self.store = open_log(self.settings), open_store(self.settings)
                    self.apps = load_apps(self.settings)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"kappaflow up did not start:\n{self.output.read_text()[-2000:]}")

    def __exit__(self, *_: object) -> None:
        self.processes()
        self.process.terminate()
        running = [process for process in self.seen.values() if process.is_running()]
        for process in psutil.wait_procs(running, timeout=STOP_S)[1]:
            process.kill()
        if hasattr(self, "store"):
            self.log.close()
            self.store.close()

    def processes(self) -> list[psutil.Process]:
        """``up`` and its children now (each remembered, to be killed if need be), and
        the servers with theirs."""
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen.update((p.pid, p) for p in tree)
        return tree + [child for server in self.servers
                       for child in (server, *server.children(recursive=True))]  # fmt: skip

    def wal_bytes(self) -> int:
        """Size of the SQLite store's write-ahead log (0 on another store)."""
        if self.settings.store != "sqlite":
            return 0
        return wal_bytes(Path(self.settings.sqlite_path))

    def backlog(self) -> int:
        """Records appended to the log and not yet committed by the workers."""
        return sum(lag for *_, lag in partition_lag(self.apps, self.log, self.store))


def role(process: psutil.Process) -> str:
    arguments = process.cmdline()
    if "kafka.Kafka" in arguments:
        return "kafka broker"
    if process.name() == "postgres":
        return "postgres"
    if "serve" in arguments:
        return "server (ingest + query)"
    if "worker" in arguments:  # named by its share file: its number in the pool
        return f"worker {Path(arguments[arguments.index('--share-file') + 1]).name}"
    return "up (autoscaler)"


class Usage(NamedTuple):
    cpu_s: float
    rss: int
    written: int
    """Bytes the process caused to be written to storage."""


@dataclass
class Tick:
    t: float
    backlog: int
    wal: int
    usage: dict[tuple[str, int], Usage]
    """By (process name, pid)."""


@dataclass
class Step:
    target: float
    seconds: float
    summary: Summary = field(default_factory=Summary)
    ticks: list[Tick] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def half(self) -> float:
        return self.seconds / 2

    @property
    def growth(self) -> float:
        """Backlog growth over the second half: slope of a least-squares line x time."""
        late = [tick for tick in self.ticks if tick.t >= self.half]
        if len(late) < 2:
            return math.inf
        slope = statistics.linear_regression([k.t for k in late], [k.backlog for k in late])
        return slope.slope * (late[-1].t - late[0].t)

    @property
    def sustained(self) -> bool:
        return (
            self.summary.rate >= (1 - TOLERANCE) * self.target
            and self.growth < GROWTH_S * self.target
        )

    def per_second(self, counter: Callable[[Usage], float]) -> dict[str, float]:
        """Growth of a counter per wall second over the second half, by process name."""
        start = next(tick for tick in reversed(self.ticks) if tick.t <= self.half)
        end: dict[tuple[str, int], float] = {}
        for tick in self.ticks:
            if tick.t > self.half:
                end.update((key, counter(usage)) for key, usage in tick.usage.items())
        grown: dict[str, float] = defaultdict(float)
        for key, value in end.items():
            grown[key[0]] += value - (counter(start.usage[key]) if key in start.usage else 0)
        wall = self.ticks[-1].t - start.t
        return {name: value / wall for name, value in sorted(grown.items())}

    @property
    def cores(self) -> dict[str, float]:
        return self.per_second(lambda usage: usage.cpu_s)

    @property
    def written_mb_s(self) -> dict[str, float]:
        """Of the server and the workers: a parent's count also has the children it
        reaped, so ``up`` shows the writes of the workers it stopped."""
        written = self.per_second(lambda usage: usage.written / 2**20)
        return {name: mb for name, mb in written.items() if name.startswith(WRITERS)}

    @property
    def peak_rss_mb(self) -> dict[str, float]:
        """Over the second half, by process name."""
        peaks: dict[str, float] = defaultdict(float)
        for tick in self.ticks:
            if tick.t > self.half:
                for (name, _), usage in tick.usage.items():
                    peaks[name] = max(peaks[name], usage.rss / 2**20)
        return dict(sorted(peaks.items()))

    def percentiles(self) -> tuple[float, float]:
        """p50 and p99 of the probes' latencies, in ms (nan without two probes)."""
        if len(self.latencies) < 2:
            return math.nan, math.nan
        cuts = statistics.quantiles(self.latencies, n=100)
        return cuts[49] * 1000, cuts[98] * 1000

    def line(self) -> str:
        first_half = [k.backlog for k in self.ticks if k.t < self.half] or [0]
        p50, p99 = self.percentiles()
        workers = sum(name.startswith("worker") for name, _ in self.ticks[-1].usage)
        verdict = "[green]sustained" if self.sustained else "[red]not sustained"
        return (
            f"{self.target:>7,.0f}/s: achieved {self.summary.rate:,.0f}/s, backlog "
            f"{first_half[-1]:,} -> {self.ticks[-1].backlog:,} ({self.growth:+,.0f} in the "
            f"2nd half), workers {workers}, WAL {self.ticks[-1].wal / 2**30:.1f} GB, "
            f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms: {verdict}"
        )


class Stack(NamedTuple):
    settings: Settings
    servers: Sequence[int] = ()
    """Pids of the servers it uses beside kappaflow's own processes."""


@contextmanager
def embedded(data: str) -> Iterator[Stack]:
    """The default stack: the embedded log and SQLite in ``data``."""
    yield Stack(Settings.load(overrides={"data_dir": data}))


def search(
    pool: Path, seconds: float, stacks: Callable[[str], AbstractContextManager[Stack]] = embedded
) -> list[Step]:
    """Double the rate from ``FIRST_RATE`` until a step fails (or ``TOP_RATE``), then
    bisect between the highest sustained and the lowest failed rate. Each step runs on
    a new stack from ``stacks`` (given a new data directory), so that none inherits the
    backlog or the store of the one before."""
    steps: list[Step] = []
    rate, low, high, bisections = float(FIRST_RATE), 0.0, math.inf, 0
    while True:
        with (
            tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as data,
            stacks(data) as stack,
            Up(*stack) as up,
        ):
            step = run_step(up, pool, rate, seconds)
        console.print(step.line())
        steps.append(step)
        if step.sustained:
            low = rate
        else:
            high = rate
        if high == math.inf and rate < TOP_RATE:
            rate = min(2 * rate, TOP_RATE)
        elif high < math.inf and bisections < BISECTIONS:
            rate = round(math.sqrt(low * high) if low else high / 2, -3)
            bisections += 1
        else:
            return steps


def run_step(up: Up, pool: Path, rate: float, seconds: float) -> Step:
    """Load the stack at ``rate`` for ``seconds``."""
    # Event time runs faster than the wall clock at the higher rates: from the past.
    step, start_ms = Step(rate, seconds), start_for(rate, VIEWERS, seconds)
    latest = spawn.RawValue(c_longlong, 0)
    results, sender = spawn.Pipe(duplex=False)
    loader = spawn.Process(target=send, args=(up.url, rate, seconds, str(pool), start_ms,
                                              latest, sender), daemon=True)  # fmt: skip
    loader.start()
    others = dict(zip((loader.pid, os.getpid()), OUTSIDE, strict=True))
    outside = [psutil.Process(pid) for pid in others]
    probe = Probe(up.url, lambda: latest.value)
    prober = threading.Thread(target=probe.run, daemon=True)
    try:
        while not latest.value and loader.is_alive():
            time.sleep(0.05)
        started = time.perf_counter()
        with console.status(f"{rate:,.0f} events/s") as status:
            while not results.poll(SAMPLE_S):
                if not loader.is_alive() and not results.poll():
                    raise RuntimeError(f"the load generator exited with {loader.exitcode}")
                t = time.perf_counter() - started
                processes = [*up.processes(), *outside]
                step.ticks.append(Tick(t, up.backlog(), up.wal_bytes(), usage(processes, others)))
                if t >= step.half and prober.ident is None:
                    prober.start()
                status.update(f"{rate:,.0f} events/s for {t:.0f} s: "
                              f"backlog {step.ticks[-1].backlog:,}")  # fmt: skip
        step.summary = results.recv()
    finally:
        probe.stop.set()
        loader.join(STOP_S)
        if loader.is_alive():
            loader.kill()
        if prober.ident is not None:
            prober.join(STOP_S)
    step.latencies = probe.latencies
    return step


def usage(processes: list[psutil.Process], names: dict[int, str]) -> dict[tuple[str, int], Usage]:
    """What the processes still running have used, named by ``names`` or else by their
    role in the stack."""
    found = {}
    for process in processes:
        try:
            with process.oneshot():
                name = names.get(process.pid) or role(process)
                cpu, memory, io = process.cpu_times(), process.memory_info(), process.io_counters()
                found[name, process.pid] = Usage(cpu.user + cpu.system, memory.rss, io.write_bytes)
        except psutil.Error:  # gone, or a zombie
            pass
    return found


def print_steps(steps: list[Step]) -> None:
    table = Table(title="end to end, each process over the 2nd half of each step: CPU (cores), "
                  "disk writes (MB/s), peak RSS (MB)")  # fmt: skip
    table.add_column("process", no_wrap=True)
    for step in steps:
        table.add_column(f"{step.target:,.0f}/s", justify="right")
    columns = [(step.cores, step.written_mb_s, step.peak_rss_mb) for step in steps]
    for name in sorted({name for step in steps for name in step.peak_rss_mb}):
        cells = [f"{cores[name]:.2f} {written.get(name, 0):3.0f} {rss[name]:4.0f}"
                 if name in rss else "" for cores, written, rss in columns]  # fmt: skip
        table.add_row(name, *cells)
    console.print(table)
