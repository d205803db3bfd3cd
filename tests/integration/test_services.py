"""The stack as a user runs it: ``kappaflow up`` and ``kappaflow ingest`` as real
processes on 127.0.0.1, over HTTP."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from functools import partial
from pathlib import Path

import httpx
import msgspec
import pytest

from kappaflow.apps.video_sim import simulate
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.testing import limit_file_size

pytestmark = pytest.mark.integration
EVENTS = "/v1/streams/heartbeats/events"
ENV = {"KAPPAFLOW_PARTITIONS": "4", "KAPPAFLOW_IDLE_TIMEOUT_S": "3600"}


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


def test_up_serves_everything_and_a_restart_keeps_all_data(
    tmp_path: Path, kappaflow, stack_settings: Settings
) -> None:
    """On each stack: embedded, embedded + PostgreSQL, Kafka + PostgreSQL."""
    env = environment(stack_settings)
    data = str(tmp_path / "data")
    workload = simulate(20_000, viewers=100, seed=3, jitter_ms=1_000)
    half = len(workload.events) // 2
    sample = sorted(workload.truth)[:40]

    def progress(client: httpx.Client) -> dict:
        return {key: client.get(f"/v1/progress/{key[0]}/{key[1]}").json() for key in sample}

    with kappaflow("up", "--data-dir", data, env=env) as stack:
        client = stack.client()
        post_all(client, workload.events[:half])
        stack.wait_for_no_lag()
        before = progress(client)
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
        assert progress(client) == before, "a restart keeps every result"
        post_all(client, workload.events[half:])
        stack.wait_for_no_lag()
        after = progress(client)
        assert stack.stop() == 0
    for key in sample:
        truth = workload.truth[key]
        assert after[key]["resume_position_s"] == truth.resume_position_s
        assert after[key]["watched_s"] == pytest.approx(truth.watched_s)
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
