"""The stack as a user runs it: ``kappaflow up`` and ``kappaflow ingest`` as real
processes on 127.0.0.1, over HTTP."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest

from kappaflow.apps.video.sim import Workload, simulate
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.testing import limit_file_size, postgres, wait_until
from kappaflow.testing.processes import Running

pytestmark = pytest.mark.integration
EVENTS = "/v1/streams/heartbeats/events"
# Progress rows written on every change, so that they equal the simulator's truth.
ENV = {"KAPPAFLOW_PARTITIONS": "4", "KAPPAFLOW_IDLE_TIMEOUT_S": "3600",
       "KAPPAFLOW_VIDEO_PROGRESS_ACCURACY_S": "0"}  # fmt: skip
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def logged_records(data_dir: Path, stack: Settings | None = None) -> list[dict]:
    """Every heartbeat in the log, read to the end offset of each partition."""
    settings = (stack or Settings.load({})).replace(data_dir=str(data_dir), partitions=4)
    log = open_log(settings)
    records = []
    for partition, end in log.end_offsets("heartbeats").items():
        offset = 0
        while offset < end:
            batch = log.read("heartbeats", partition, offset, 100_000)
            records += [msgspec.json.decode(value) for value in batch.values]
            offset = batch.next_offset
    log.close()
    return records


def environment(stack: Settings) -> dict[str, str]:
    """The variables that put a process on the test's stack."""
    return {
        **ENV,
        "KAPPAFLOW_LOG": stack.log,
        "KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap_servers,
        "KAPPAFLOW_STORE": stack.store,
        "KAPPAFLOW_POSTGRES_DSN": stack.postgres_dsn,
    }


def post_all(client: httpx.Client, events: list, size: int = 500) -> None:
    encode = msgspec.json.Encoder().encode
    for start in range(0, len(events), size):
        answer = client.post(
            EVENTS,
            content=encode(events[start : start + size]),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 202, answer.text


def beat(user: str = "u") -> dict:
    return {"user_id": user, "video_id": "v", "position_s": 1.0, "ts": int(time.time() * 1000)}


def progress(client: httpx.Client, keys: list[tuple[str, str]]) -> dict:
    return {key: client.get(f"/v1/progress/{key[0]}/{key[1]}").json() for key in keys}


def assert_progress_is_the_truth(found: dict, workload: Workload) -> None:
    for key, answer in found.items():
        truth = workload.truth[key]
        assert answer["resume_position_s"] == truth.resume_position_s, key
        assert answer["watched_s"] == pytest.approx(truth.watched_s), key


def alive(process: psutil.Process) -> bool:
    """Running, not ended (a zombie whose parent is gone may wait long to be reaped)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_serves_everything_and_a_restart_keeps_all_data(
    tmp_path: Path, kappaflow, stack_settings: Settings
) -> None:
    """On each stack: embedded, embedded + PostgreSQL, Kafka + PostgreSQL."""
    env = environment(stack_settings)
    data = str(tmp_path / "data")
    workload = simulate(20_000, viewers=100, seed=3, jitter_ms=1_000)
    half = len(workload.events) // 2
    sample = sorted(workload.truth)[:40]
    with kappaflow("up", "--data-dir", data, env=env) as stack:
        client = stack.client()
        post_all(client, workload.events[:half])
        stack.wait_for_no_lag()
        before = progress(client, sample)
        assert client.post("/v1/streams/x/events", json={}).status_code == 404
        assert client.post(EVENTS, json={"user_id": 1}).status_code == 400
        assert (
            client.post(EVENTS, content=b"x", headers={"content-type": "text/plain"}).status_code
            == 415
        )
        assert (
            client.post(
                EVENTS, content=b" " * 5_000_000, headers={"content-type": "application/json"}
            ).status_code
            == 413
        )
        assert stack.stop() == 0
    assert "stopped" in stack.output.read_text()

    with kappaflow("up", "--data-dir", data, env=env) as stack:
        client = stack.client()
        assert progress(client, sample) == before, "a restart keeps every result"
        post_all(client, workload.events[half:])
        stack.wait_for_no_lag()
        after = progress(client, sample)
        assert stack.stop() == 0
    assert_progress_is_the_truth(after, workload)
    assert len(logged_records(tmp_path / "data", stack_settings)) == len(workload.events)


def test_sigterm_during_load_loses_nothing_acknowledged(tmp_path: Path, kappaflow) -> None:
    data = str(tmp_path / "data")
    accepted: list[int] = []
    attempted: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(url: str, first: int) -> None:
        number = first
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                batch = list(range(number, number + 200))
                number += 200 * 4
                body = [{"user_id": f"u{n}", "video_id": "v", "position_s": n, "ts": 1000}
                        for n in batch]  # fmt: skip
                with lock:
                    attempted.extend(batch)
                try:
                    answer = client.post(EVENTS, json=body)
                except httpx.HTTPError:
                    return
                if answer.status_code == 202:
                    with lock:
                        accepted.extend(batch)

    with kappaflow("up", "--data-dir", data, env=ENV) as stack:
        threads = [
            threading.Thread(target=client_loop, args=(stack.url, n * 200)) for n in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(60) == 0
        stop.set()
        for thread in threads:
            thread.join(30)
    logged = sorted(int(r["position_s"]) for r in logged_records(tmp_path / "data"))
    assert len(accepted) > 1_000, "the load ran before the stop"
    assert logged == sorted(accepted), "exactly the acknowledged events are in the log"
    assert set(attempted) > set(accepted) or len(attempted) == len(accepted)


def test_a_failing_log_write_is_503_and_writes_nothing(tmp_path: Path, kappaflow) -> None:
    data = str(tmp_path / "data")
    env = {**ENV, "KAPPAFLOW_RETRY_AFTER_S": "3"}
    small = [{"user_id": "u", "video_id": "v", "position_s": n, "ts": 1000} for n in range(10)]
    big = [{"user_id": "u", "video_id": "v", "position_s": n, "ts": 1000} for n in range(5_000)]
    with kappaflow("ingest", "--data-dir", data, env=env,
                   preexec_fn=partial(limit_file_size, 200_000)) as ingest:  # fmt: skip
        client = ingest.client()
        assert client.post(EVENTS, json=small).status_code == 202
        failed = client.post(EVENTS, json=big)
        assert failed.status_code == 503
        assert failed.headers["retry-after"] == "3"
        assert "cannot append" in failed.json()["error"]
        assert client.post(EVENTS, json=small).status_code == 202, "the log recovers"
        # uvicorn re-raises SIGTERM once it has shut down gracefully
        assert ingest.stop() == -signal.SIGTERM
    assert "stopped; every acknowledged event is in the log" in ingest.output.read_text()
    assert len(logged_records(tmp_path / "data")) == 20


@pytest.mark.parametrize(
    ("command", "says"),
    [("up", "kappaflow.up"), ("worker", "kappaflow worker"), ("query", "kappaflow query")],
)
def test_a_store_an_earlier_app_wrote_stops_the_stack_at_start_naming_the_table(
    tmp_path: Path, command: str, says: str
) -> None:
    """A result table the store has in another shape (progress rows keyed by (user,
    video), before the partition led their key): exit 1 at start, the table named."""
    data = tmp_path / "data"
    settings = Settings.load({}, {"data_dir": str(data)})
    settings.sqlite_path.parent.mkdir(parents=True)
    db = sqlite3.connect(settings.sqlite_path)
    with closing(db), db:
        db.execute("CREATE TABLE video_progress (user_id TEXT, video_id TEXT, resume_position_s "
                   "REAL, last_event_ms INTEGER, open_segments TEXT, PRIMARY KEY (user_id, "
                   "video_id)) WITHOUT ROWID")  # fmt: skip
    finished = subprocess.run(
        [sys.executable, "-m", "kappaflow", command, "--data-dir", str(data)],
        env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert finished.returncode == 1, finished.stderr
    assert "table video_progress has columns (user_id, video_id, resume_position_s" in (
        finished.stderr
    )
    assert "keyed by (partition, user_id, video_id)" in finished.stderr
    assert says in finished.stderr and "Traceback" not in finished.stderr


@contextmanager
def up_on_postgres(kappaflow, tmp_path: Path) -> Iterator[tuple[postgres.PostgresServer, Running]]:
    """``kappaflow up`` on a PostgreSQL server of the test's own, which it may stop."""
    with postgres.postgres_server() as server, postgres.postgres_database(server.dsn) as dsn:
        env = {**ENV, "KAPPAFLOW_STORE": "postgres", "KAPPAFLOW_POSTGRES_DSN": dsn}
        try:
            with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=env) as stack:
                yield server, stack
        finally:
            if server.stopped:  # the database is dropped next
                server.start()


def test_a_store_outage_stops_the_queries_not_ingest_nor_up(tmp_path: Path, kappaflow) -> None:
    """PostgreSQL stopped for 8 s (connections refused) under ``kappaflow up``: ingest
    goes on answering 202, queries and /readyz answer 503, ``up`` and its processes
    run on, and the workers catch up once it is back."""
    workload = simulate(6_000, viewers=40, seed=4, jitter_ms=1_000)
    half = len(workload.events) // 2
    sample = sorted(workload.truth)[:20]
    with up_on_postgres(kappaflow, tmp_path) as (server, stack):
        client = stack.client()
        post_all(client, workload.events[:half])
        stack.wait_for_no_lag()
        processes = {child.pid for child in psutil.Process(stack.process.pid).children()}
        server.stop()
        down_at = time.monotonic()
        post_all(client, workload.events[half:])
        user, video = sample[0]
        refused = client.get(f"/v1/progress/{user}/{video}")
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert client.get("/readyz").status_code == 503
        time.sleep(max(0.0, 8 - (time.monotonic() - down_at)))  # the outage lasts 8 s
        assert stack.process.poll() is None
        assert {child.pid for child in psutil.Process(stack.process.pid).children()} == processes
        server.start()
        assert client.get("/readyz").status_code == 200
        stack.wait_for_no_lag(timeout_s=90)
        found = progress(client, sample)
        assert stack.stop() == 0
    assert_progress_is_the_truth(found, workload)


def test_up_started_while_the_store_is_down_serves_ingest_and_catches_up(
    tmp_path: Path, kappaflow
) -> None:
    """``up`` started (or started again after a crash) during a PostgreSQL outage runs:
    ingest answers 202, queries and /readyz 503, and once the store is back its tables
    are created and the workers process every event."""
    workload = simulate(2_000, viewers=20, seed=9, jitter_ms=0)
    with postgres.postgres_server() as server, postgres.postgres_database(server.dsn) as dsn:
        env = {**ENV, "KAPPAFLOW_STORE": "postgres", "KAPPAFLOW_POSTGRES_DSN": dsn}
        server.stop()
        try:
            with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=env,
                           probe="/healthz") as stack:  # fmt: skip
                client = stack.client()
                post_all(client, workload.events)
                assert client.get("/readyz").status_code == 503
                assert client.get("/v1/progress/u/v").status_code == 503
                wait_until(lambda: "ready: " in stack.output.read_text(), 30,
                           "up ready (its workers started) while the store is down")  # fmt: skip
                assert stack.process.poll() is None
                server.start()
                stack.wait_for_no_lag(timeout_s=90)
                found = progress(client, sorted(workload.truth))
                assert stack.stop() == 0
        finally:
            if server.stopped:  # the database is dropped next
                server.start()
    assert_progress_is_the_truth(found, workload)


def test_healthz_and_ingest_answer_at_once_while_a_query_waits_for_the_store(
    tmp_path: Path, kappaflow
) -> None:
    """A query waits for a store that is down (retried for seconds) in a thread of its
    own: the event loop goes on answering."""
    with up_on_postgres(kappaflow, tmp_path) as (server, stack):
        client, querying = stack.client(), stack.client()
        server.stop()
        answers: list[httpx.Response] = []
        query = threading.Thread(target=lambda: answers.append(querying.get("/v1/progress/u/v")))
        query.start()
        took, ingested = [], []
        while query.is_alive():
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            took.append(time.monotonic() - started)
            ingested.append(client.post(EVENTS, json=beat()).status_code)
        query.join()
        assert answers[0].status_code == 503
        assert len(took) >= 3 and max(took) < 0.2, took
        assert set(ingested) == {202}


def test_a_killed_up_takes_its_processes_with_it(tmp_path: Path, kappaflow) -> None:
    """SIGKILL of ``up``: its server and workers end too (no orphan goes on answering
    202 with no worker to process), and a new ``up`` on the data directory processes
    everything acknowledged before."""
    data = str(tmp_path / "data")
    workload = simulate(2_000, viewers=20, seed=8, jitter_ms=0)
    half = len(workload.events) // 2
    with kappaflow("up", "--data-dir", data, env=ENV) as first:
        post_all(first.client(), workload.events[:half])

        def started() -> list[psutil.Process]:
            found = psutil.Process(first.process.pid).children()
            return found if len(found) >= 2 else []

        children = wait_until(started, 30, "the server and a worker started")
        first.process.kill()
        first.process.wait()
        wait_until(lambda: not any(alive(child) for child in children), 10,
                   "the server and workers end with up")  # fmt: skip
    with kappaflow("up", "--data-dir", data, env=ENV) as second:
        client = second.client()
        post_all(client, workload.events[half:])
        second.wait_for_no_lag()
        found = progress(client, sorted(workload.truth))
        assert second.stop() == 0
    assert_progress_is_the_truth(found, workload)


def test_a_second_up_on_a_data_directory_in_use_refuses_naming_the_holder(
    tmp_path: Path, kappaflow
) -> None:
    """On the same port too, where the first one's server answers the readiness probe;
    the first ``up`` goes on undisturbed."""
    data = tmp_path / "data"
    with kappaflow("up", "--data-dir", str(data), env=ENV) as first:
        children = psutil.Process(first.process.pid).children()
        server = next(child for child in children if "serve" in child.cmdline())
        port = first.url.rsplit(":", 1)[1]
        second = subprocess.run(
            [sys.executable, "-m", "kappaflow", "up", "--data-dir", str(data), "--port", port],
            env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        said = f"another process (pid {server.pid}) is writing to the log at {data}/log"
        assert said in second.stderr and "ready" not in second.stderr
        assert first.client().post(EVENTS, json=beat()).status_code == 202
        first.wait_for_no_lag()
        assert all(alive(child) for child in children)


def test_up_applies_the_log_retention_to_what_the_workers_processed(
    tmp_path: Path, kappaflow
) -> None:
    """Small segments and an 8 KiB bound per partition: once the workers processed
    everything, ``up`` deletes the oldest segments, and the results are whole."""
    env = {**ENV, "KAPPAFLOW_LOG_SEGMENT_BYTES": "4096", "KAPPAFLOW_LOG_RETENTION_BYTES": "8192",
           "KAPPAFLOW_LOG_RETENTION_CHECK_S": "0.2"}  # fmt: skip
    data = tmp_path / "data"
    workload = simulate(4_000, viewers=40, seed=6, jitter_ms=0)
    reader = open_log(Settings.load({}, {"data_dir": str(data), "partitions": 4}))
    with kappaflow("up", "--data-dir", str(data), env=env) as stack:
        client = stack.client()
        post_all(client, workload.events, size=40)
        stack.wait_for_no_lag()
        wait_until(lambda: all(reader.start_offsets("heartbeats").values()), 30,
                   "the oldest segments of every partition deleted")  # fmt: skip
        for partition in range(4):
            segments = (data / "log" / "heartbeats" / str(partition)).glob("*.batches")
            assert sum(segment.stat().st_size for segment in segments) <= 8192
        found = progress(client, sorted(workload.truth))
        assert stack.stop() == 0
    assert_progress_is_the_truth(found, workload)


def test_every_metric_family_the_docs_list_is_on_metrics_from_start(
    tmp_path: Path, kappaflow
) -> None:
    """At 0 before anything happened: an alert on a family without samples sees "no
    data" instead."""
    families = set(re.findall(r"^\| `(kappaflow_\w+)`", OPERATIONS.read_text(), re.MULTILINE))
    assert len(families) >= 10
    with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=ENV) as stack:
        text = stack.client().get("/metrics").text
    samples = {line.split("{")[0].split()[0] for line in text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    missing = {f for f in families if not any(re.fullmatch(rf"{f}(_\w+)?", s) for s in samples)}
    assert not missing, text


def test_metrics_skip_the_empty_file_of_a_process_killed_as_it_created_it(
    tmp_path: Path, kappaflow
) -> None:
    """A worker killed between creating its metrics file and sizing it leaves the file
    empty for good; the scrape goes on with every other process's metrics."""
    data = tmp_path / "data"
    with kappaflow("up", "--data-dir", str(data), env=ENV) as stack:
        (data / "metrics" / "gauge_mostrecent_4194304.db").touch()
        answer = stack.client().get("/metrics")
        assert answer.status_code == 200, answer.text
        stack.client().post(EVENTS, json=[beat()]).raise_for_status()
        stack.wait_for_no_lag()
        answer = stack.client().get("/metrics")
        assert stack.stop() == 0
    processed = re.search(r'^kappaflow_events_processed_total\{group="video.heartbeats"\} (\S+)',
                          answer.text, re.MULTILINE)  # fmt: skip
    assert processed and float(processed[1]) == 1
