"""Chaos under load: ``kappaflow up`` (its server and autoscaled workers) on the embedded
log and a PostgreSQL store reached through a proxy, while a client posts real click
records and simulated heartbeats. For about a minute, at random, a worker, the server
or ``up`` itself is killed with SIGKILL (``up`` is started again on the same data
directory once its children have ended with it) and the store's connections are cut
for a few seconds. The seed is printed; ``CHAOS_SEED`` replays its choices
(not their timing). Once the stack has caught up:

- every click answered 202 is counted exactly once (each click carries its own id in
  its URL) or is in the dead letters with a reason, and the counts of every window and
  dimension are exactly those of the clicks counted; no click answered otherwise is
  counted. A POST whose connection broke after it was sent has an unknown outcome (it
  may have been appended, wholly or in part): each of its clicks is counted at most
  once, so acknowledged <= counted + dead-lettered <= acknowledged + unknown;
- the log holds every acknowledged heartbeat once and no refused one, and the video
  results equal an uninterrupted run over what the log holds."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import httpx
import msgspec
import psutil
import pytest

from kappaflow.apps.clicks.app import WINDOWS_MS, Click, dimensions
from kappaflow.apps.clicks.demo import sample_path
from kappaflow.apps.video.app import Heartbeat, create_app
from kappaflow.apps.video.sim import HEARTBEAT_S, simulate
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.testing import result_tables, run_events, wait_until
from kappaflow.testing.proxy import TcpProxy, tcp_proxy
from kappaflow.up import free_port

pytestmark = pytest.mark.integration

CHAOS_S = 60.0
PAUSE_S = (1.5, 5.0)
"""Between two blows."""
OUTAGE_S = (2.0, 6.0)
"""How long the store's connections stay cut."""
BLOWS = ("worker", "worker", "server", "up", "store", "store")
"""Each round of blows, shuffled: every kind comes in every round."""
ENV = {
    "KAPPAFLOW_PARTITIONS": "4",
    "KAPPAFLOW_STORE": "postgres",
    "KAPPAFLOW_BATCH_MAX_EVENTS": "500",  # many commits to interrupt
    # Video results that depend on the events alone: no idle flush (it follows wall-clock
    # pauses, which the kills change), progress rows on every change.
    "KAPPAFLOW_IDLE_TIMEOUT_S": "3600",
    "KAPPAFLOW_VIDEO_PROGRESS_ACCURACY_S": "0",
    # Scale up on the backlogs the blows leave, and down soon after.
    "KAPPAFLOW_LAG_THRESHOLD": "500",
    "KAPPAFLOW_POLLING_INTERVAL_S": "0.5",
    "KAPPAFLOW_SCALE_DOWN_STABILIZATION_S": "3",
}
CLICKS, HEARTBEATS = "/v1/streams/clicks/events", "/v1/streams/heartbeats/events"
CLICKS_PER_POST, HEARTBEATS_PER_POST = 40, 80
LATE_EVERY = 25
"""Every 25th post of clicks is stamped 10 minutes back: late, for the dead letters."""
TAG = "#chaos"
"""Each click's URL ends with this and its id."""
GROUP = "video.heartbeats"
VIDEO = ("video_segments", "video_progress", "video_royalties", "ad_impressions", "ad_viewers")


@dataclass
class Outcomes:
    """The ids of the events posted, by what the answer said."""

    accepted: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    """Answered otherwise than 202, or never sent (the connection could not be made)."""
    unknown: list[int] = field(default_factory=list)
    """The connection broke once the request was sent: appended or not, maybe in part."""
    statuses: Counter[int] = field(default_factory=Counter)


class Load:
    """A client thread posting clicks (real records, stamped with the wall clock) and
    heartbeats in turn, remembering each event and what its POST was answered."""

    def __init__(self, url: str, heartbeats: list[Heartbeat]) -> None:
        lines = gzip.decompress(sample_path().read_bytes()).splitlines()
        # Keep-alives carry no id of their own to find them by: clicks only.
        self.records = [r for r in map(json.loads, lines) if "_heartbeat_" not in r]
        self.clicks: list[dict] = []
        self.heartbeats = heartbeats
        self.outcomes = {CLICKS: Outcomes(), HEARTBEATS: Outcomes()}
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="load")
        self.failure: BaseException | None = None

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def _run(self) -> None:
        posts = sent = 0
        try:
            with httpx.Client(base_url=self.url, timeout=10) as client:
                while not self.stop.is_set():
                    posts += 1
                    stamp = int(time.time()) - (600 if posts % LATE_EVERY == 0 else 0)
                    first = len(self.clicks)
                    for n in range(CLICKS_PER_POST):
                        record = self.records[(first + n) % len(self.records)]
                        url = f"{record.get('u', '')}{TAG}{first + n}"
                        self.clicks.append({**record, "t": stamp, "u": url})
                    self._post(client, CLICKS, self.clicks[first:], range(first, len(self.clicks)))
                    if sent < len(self.heartbeats):
                        batch = range(sent, min(sent + HEARTBEATS_PER_POST, len(self.heartbeats)))
                        self._post(client, HEARTBEATS, [self.heartbeats[i] for i in batch], batch)
                        sent = batch.stop
                    self.stop.wait(0.05)  # the load's pace
        except BaseException as failure:  # seen by the test, not lost in the thread
            self.failure = failure

    def _post(self, client: httpx.Client, path: str, events: list, ids: range) -> None:
        outcomes = self.outcomes[path]
        body = msgspec.json.encode(events)
        try:
            answer = client.post(path, content=body, headers={"content-type": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout):
            outcomes.refused.extend(ids)
            return
        except httpx.TransportError:
            outcomes.unknown.extend(ids)
            return
        outcomes.statuses[answer.status_code] += 1
        (outcomes.accepted if answer.status_code == 202 else outcomes.refused).extend(ids)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Stack:
    """``kappaflow up`` on one data directory and port, started again after each blow
    that ends it. Its processes are found by the data directory in their command line."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.data = tmp_path / "data"
        self.logs = tmp_path
        self.env = {**os.environ, **env}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.up: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        output = self.logs / f"up-{self.starts}.log"
        with output.open("wb") as sink:
            self.up = subprocess.Popen(
                [sys.executable, "-m", "kappaflow", "up", "--data-dir", str(self.data),
                 "--port", str(self.port)],
                env=self.env, stdout=sink, stderr=sink,
            )  # fmt: skip

        def serving() -> bool:
            assert self.up is not None
            assert self.up.poll() is None, f"up exited: {output.read_text()[-3000:]}"
            try:  # ingest; queries wait for the store, which may be cut off
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, 60, "up serving", 0.1)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this stack: ``up`` and its children."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if str(self.data) in (process.info["cmdline"] or []) and alive(process):
                found.append(process)
        return found

    def children(self, role: str) -> list[psutil.Process]:
        return [p for p in self.processes() if p.info["cmdline"][3:4] == [role]]

    def orphans_end(self) -> None:
        """Once ``up`` is gone, its children must end with it."""
        wait_until(lambda: not self.processes(), 30, "no process of the stack left without up")

    def kill_worker(self, rng: Random) -> None:
        workers = wait_until(lambda: self.children("worker"), 60, "a worker running")
        rng.choice(workers).send_signal(signal.SIGKILL)

    def kill_server(self) -> None:
        """``up`` starts its server again, and its workers go on meanwhile."""
        (server,) = wait_until(lambda: self.children("serve"), 30, "the server running")
        server.send_signal(signal.SIGKILL)
        wait_until(lambda: [s for s in self.children("serve") if s.pid != server.pid], 60,
                   "the server started again")  # fmt: skip
        assert self.up is not None and self.up.poll() is None

    def kill_up(self) -> None:
        assert self.up is not None
        self.up.send_signal(signal.SIGKILL)
        self.up.wait(10)
        self.orphans_end()
        self.start()

    def lag(self) -> dict[str, int] | None:
        """Each stream's lag from /status (None while it cannot say); halted partitions
        count as lag."""
        try:
            answer = httpx.get(f"{self.url}/status", timeout=5)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        streams = answer.json()["streams"]
        halted = sum(p["halted"] is not None for s in streams for p in s["partitions"])
        return {s["stream"]: s["lag"] for s in streams} | {"halted": halted}

    def stop(self) -> None:
        assert self.up is not None
        self.up.send_signal(signal.SIGTERM)
        assert self.up.wait(90) == 0
        self.orphans_end()

    def kill_all(self) -> None:
        for process in self.processes():
            process.kill()
        if self.up is not None and self.up.poll() is None:
            self.up.kill()
            self.up.wait()

    def output(self) -> str:
        """What each ``up`` and its processes said, without the store's retries."""
        said = []
        for path in sorted(self.logs.glob("up-*.log")):
            lines = [line for line in path.read_text().splitlines()
                     if "unavailable" not in line and "accepting TCP/IP" not in line]  # fmt: skip
            said += [f"== {path.name}", *lines[-40:]]
        return "\n".join(said)


@pytest.fixture
def store_behind_proxy(postgres_dsn: str) -> Iterator[tuple[TcpProxy, str, str]]:
    """A proxy in front of the session's PostgreSQL server; yields it, the database's
    DSN through it and the database's own DSN."""
    server, database = postgres_dsn.rsplit("/", 1)
    host, port = server.rsplit(":", 1)
    with tcp_proxy(int(port)) as proxy:
        yield proxy, f"{host}:{proxy.port}/{database}", postgres_dsn


def chaos(stack: Stack, proxy: TcpProxy, rng: Random, load: Load) -> Counter[str]:
    """Blows at random for `CHAOS_S`, and until each kind has landed; returns how many
    of each kind landed."""
    blows: Counter[str] = Counter()
    started = time.monotonic()
    heal: threading.Timer | None = None
    round_: list[str] = []
    try:
        while load.failure is None and (
            time.monotonic() - started < CHAOS_S or set(blows) != set(BLOWS)
        ):
            time.sleep(rng.uniform(*PAUSE_S))  # the chaos's pace
            round_ = round_ or rng.sample(BLOWS, len(BLOWS))
            blow = round_.pop()
            if blow == "store" and proxy.is_cut:
                continue
            print(f"{time.monotonic() - started:5.1f} s: {blow}", flush=True)
            assert stack.up is not None and stack.up.poll() is None, "up exited by itself"
            if blow == "worker":
                stack.kill_worker(rng)
            elif blow == "server":
                stack.kill_server()
            elif blow == "up":
                stack.kill_up()
            else:
                proxy.cut()
                heal = threading.Timer(rng.uniform(*OUTAGE_S), proxy.heal)
                heal.start()
            blows[blow] += 1
    finally:
        if heal is not None:
            heal.cancel()
            heal.join()
        proxy.heal()
    return blows


def test_acknowledged_events_survive_kills_and_store_cuts_exactly_once(
    tmp_path: Path, store_behind_proxy: tuple[TcpProxy, str, str]
) -> None:
    # Not a KAPPAFLOW_ variable: the stack's processes refuse settings they do not know.
    seed = int(os.environ.get("CHAOS_SEED") or time.time_ns() % 2**32)
    print(f"chaos seed {seed}", flush=True)
    rng = Random(seed)
    proxy, through_proxy, direct = store_behind_proxy
    viewers = 300
    count = 200_000  # about 140,000 heartbeats: more than the load posts
    now_ms = int(time.time() * 1000)
    span_ms = count * HEARTBEAT_S * 1000 // viewers
    workload = simulate(count, viewers=viewers, seed=seed, start_ms=now_ms - span_ms,
                        jitter_ms=1_000)  # fmt: skip
    stack = Stack(tmp_path, {**ENV, "KAPPAFLOW_POSTGRES_DSN": through_proxy})
    started = time.monotonic()
    try:
        stack.start()
        with Load(stack.url, workload.events) as load:
            wait_until(lambda: len(load.outcomes[CLICKS].accepted) > 1_000, 30, "load running")
            blows = chaos(stack, proxy, rng, load)
        assert load.failure is None, load.failure
        print(f"blows {dict(blows)} in {time.monotonic() - started:.0f} s", flush=True)
        assert stack.up is not None and stack.up.poll() is None, "up runs on"
        wait_until(lambda: (lag := stack.lag()) is not None and not any(lag.values()), 120,
                   "the stack caught up (lag 0, nothing halted, from /status)", 0.5)  # fmt: skip
        print(f"caught up {time.monotonic() - started:.0f} s after the start", flush=True)
        dead_letters = httpx.get(f"{stack.url}/v1/dead-letters",
                                 params={"stream": "clicks", "limit": 10_000}).json()  # fmt: skip
        stack.stop()
    except BaseException:
        print(stack.output())
        raise
    finally:
        stack.kill_all()
    assert len(dead_letters) < 10_000
    check_clicks(load, dead_letters, direct)
    check_video(tmp_path, load, workload.events, direct)


def check_clicks(load: Load, dead_letters: list[dict], dsn: str) -> None:
    outcomes = load.outcomes[CLICKS]
    print(f"clicks: {len(outcomes.accepted)} accepted, {len(outcomes.refused)} refused, "
          f"{len(outcomes.unknown)} unknown; answers {dict(outcomes.statuses)}")  # fmt: skip
    assert set(outcomes.statuses) <= {202, 429, 503}, outcomes.statuses
    settings = Settings.load({}, {"store": "postgres", "postgres_dsn": dsn})
    tables = result_tables(settings, [f"click_counts_{window}" for window in WINDOWS_MS])
    rows = [(window, *row) for window in WINDOWS_MS for row in tables[f"click_counts_{window}"]]
    counted = Counter({int(value.rpartition(TAG)[2]): events for window, dimension, value, _, events
                       in rows if (window, dimension) == ("1h", "url")})  # fmt: skip
    dead: Counter[int] = Counter()
    for letter in dead_letters:
        assert letter["reason"].split(":")[0], letter
        dead[int(json.loads(letter["record"])["u"].rpartition(TAG)[2])] += 1
    print(f"clicks: {sum(counted.values())} counted, {sum(dead.values())} dead-lettered")
    assert {i: n for i, n in counted.items() if n != 1} == {}, "counted more than once"
    assert {i: n for i, n in dead.items() if n != 1} == {}, "dead-lettered more than once"
    assert set(counted).isdisjoint(dead), "counted and dead-lettered"
    assert set(outcomes.accepted) - set(counted) - set(dead) == set(), "acknowledged, lost"
    assert set(counted) | set(dead) <= set(outcomes.accepted) | set(outcomes.unknown)
    assert dead, "late clicks went to the dead letters"
    decoder = msgspec.json.Decoder(Click)
    expected: Counter[tuple] = Counter()
    for i in counted:
        click = decoder.decode(msgspec.json.encode(load.clicks[i]))
        pairs = dimensions(click)
        for window, size in WINDOWS_MS.items():
            start = click.t * 1000 - click.t * 1000 % size
            for pair in pairs:
                expected[window, pair.dimension, pair.value, start] += 1
    assert Counter({tuple(row[:4]): row[4] for row in rows}) == expected


def check_video(tmp_path: Path, load: Load, events: list[Heartbeat], dsn: str) -> None:
    outcomes = load.outcomes[HEARTBEATS]
    print(f"heartbeats: {len(outcomes.accepted)} accepted, {len(outcomes.refused)} refused, "
          f"{len(outcomes.unknown)} unknown; answers {dict(outcomes.statuses)}")  # fmt: skip
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})
    logged = logged_heartbeats(settings)
    index = {msgspec.structs.astuple(event): i for i, event in enumerate(events)}
    found = Counter(index[msgspec.structs.astuple(event)] for event in logged)
    assert {i: n for i, n in found.items() if n != 1} == {}, "logged more than once"
    assert set(outcomes.accepted) <= set(found), "acknowledged, not in the log"
    assert set(found) <= set(outcomes.accepted) | set(outcomes.unknown)

    reference = Settings.load({}, {"data_dir": str(tmp_path / "reference"), "partitions": 4,
                                   "idle_timeout_s": 3600,
                                   "video_progress_accuracy_s": 0})  # fmt: skip
    run_events(create_app(reference), logged, reference).close()
    chaotic = Settings.load({}, {"store": "postgres", "postgres_dsn": dsn})
    tables = [*VIDEO, "kf_dead_letters"]
    got, want = result_tables(chaotic, tables), result_tables(reference, tables)
    got["kf_dead_letters"] = [row for row in got["kf_dead_letters"] if row[0] == GROUP]
    for name in tables:
        assert got[name] == want[name], f"{name} differs from the uninterrupted run"
    assert want["video_segments"]


def logged_heartbeats(settings: Settings) -> list[Heartbeat]:
    """The log's heartbeats, partition after partition, each in its order."""
    log = open_log(settings)
    decoder = msgspec.json.Decoder(Heartbeat)
    events = []
    try:
        for partition, end in log.end_offsets("heartbeats").items():
            offset = 0
            while offset < end:
                batch = log.read("heartbeats", partition, offset, 100_000)
                events += [decoder.decode(value) for value in batch.values]
                offset = batch.next_offset
    finally:
        log.close()
    return events
