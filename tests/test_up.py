"""The supervisor of ``kappaflow up``: restarts that back off, a server that dies started
again, and a start refused while another process holds what the stack needs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kappaflow.errors import LogUnavailable
from kappaflow.log.embedded import EmbeddedLog
from kappaflow.settings import Settings
from kappaflow.testing import wait_until
from kappaflow.up import (
    MAX_RESTART_PAUSE_S,
    RAN_FINE_S,
    Stack,
    StackFailed,
    free_port,
    free_ports,
    refuse_if_taken,
)


def test_a_worker_that_exits_at_once_is_restarted_after_pauses_that_double(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that exits at once stands in for a worker that cannot start; time is
    the stack's clock, in tenths of a second, moved on while no worker is restarted. A
    worker that ran fine for a while before it exits is restarted at once again."""
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})
    now = [0.0]
    stack = Stack(settings, quiet=True, clock=lambda: now[0])
    program = ["raise SystemExit(3)"]
    monkeypatch.setattr(
        stack, "spawn", lambda *_: subprocess.Popen([sys.executable, "-c", program[0]])
    )
    started: list[float] = []
    try:
        stack.start(1, serve=False)
        tenths = 0
        while tenths < 900:
            worker = stack.workers[0]
            worker.process.wait()
            stack.check()
            if stack.workers[0] is not worker:
                started.append(now[0])
            else:
                tenths += 1
                now[0] = tenths / 10
        pauses = [b - a for a, b in zip([0.0, *started], started, strict=False)]
        assert pauses[:8] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_RESTART_PAUSE_S]
        assert set(pauses[7:]) == {MAX_RESTART_PAUSE_S}
        assert "exited with code 3 after 0.0 s; restarting it in 4 s (exit 5 in a row)" in (
            caplog.text
        )

        program[0] = "import time; time.sleep(60)"
        now[0] += MAX_RESTART_PAUSE_S
        stack.check()
        runs_fine = stack.workers[0]
        assert runs_fine.process.poll() is None
        now[0] += RAN_FINE_S
        runs_fine.process.kill()
        runs_fine.process.wait()
        stack.check()
        assert stack.workers[0] is not runs_fine, "restarted at once"
    finally:
        stack.stop()


def test_up_refuses_a_data_directory_whose_log_another_process_writes(tmp_path: Path) -> None:
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data")})
    writer = EmbeddedLog(settings.log_path, writer=True)
    try:
        with pytest.raises(LogUnavailable, match=rf"pid \d+\) is writing to the log at {tmp_path}"):
            refuse_if_taken(settings)
    finally:
        writer.close()
    refuse_if_taken(settings)


def test_up_refuses_a_port_another_process_listens_on(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "port": port})
        with pytest.raises(StackFailed, match=f"cannot listen on 127.0.0.1:{port}: .*--port"):
            refuse_if_taken(settings)


def test_ports_picked_together_are_distinct_and_free() -> None:
    """Ports picked one after another may repeat (a Kafka node given the same port for
    its broker and its controller failed to start)."""
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))


def test_a_server_that_dies_is_started_again_and_loses_no_acknowledged_event(
    tmp_path: Path,
) -> None:
    """The workers go on while the server is away; the server started again takes events,
    and both those acknowledged before the kill and after are processed."""
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "port": free_port(),
                                  "partitions": 2, "video_progress_accuracy_s": 0})  # fmt: skip
    now_ms = int(time.time() * 1000)
    beat = {"user_id": "u", "video_id": "v", "position_s": 1.0, "ts": now_ms}
    stack = Stack(settings, quiet=True)
    try:
        stack.start(1)
        events = f"{stack.url}/v1/streams/heartbeats/events"
        assert httpx.post(events, json=[beat]).status_code == 202
        assert stack.server is not None
        first = stack.server.process
        first.kill()
        first.wait()
        worker = stack.workers[0].process
        wait_until(lambda: stack.check() or stack.server.process is not first, 30,
                   "the server started again")  # fmt: skip
        stack.wait_ready(30)
        again = {**beat, "position_s": 6.0, "ts": now_ms + 5_000}
        assert httpx.post(events, json=[again]).status_code == 202

        def resumes_at_6() -> bool:
            answer = httpx.get(f"{stack.url}/v1/progress/u/v")
            return answer.status_code == 200 and answer.json()["resume_position_s"] == 6.0

        wait_until(resumes_at_6, 30, "both heartbeats processed")
        assert httpx.get(f"{stack.url}/v1/progress/u/v").json()["watched_s"] == 5.0
        assert stack.workers[0].process is worker, "the worker went on"
    finally:
        stack.stop()


def test_each_version_runs_in_a_pool_of_its_own_scaled_on_its_own_lag(
    settings: Settings,
) -> None:
    """Version 1 has processed the log; version 2, deployed, has all of it to replay:
    its pool scales up to two workers on its lag while version 1's stays at one. A
    promotion restarts the live pool; a retired version's pool stops."""
    from contextlib import closing

    import video_v2

    from kappaflow.app import build_app
    from kappaflow.apps.video.sim import simulate
    from kappaflow.deployments import deploy
    from kappaflow.ingest.appender import Appender
    from kappaflow.log import open_log
    from kappaflow.store import open_store
    from kappaflow.store.base import PartitionCommit
    from kappaflow.up import Versions

    settings = settings.replace(apps=("video",), lag_threshold=1_000, max_replicas=2)
    first = build_app(settings, "kappaflow.apps.video.app")
    stream, group = first.streams[0], first.group(first.streams[0])
    with closing(open_log(settings, writer=True)) as log, closing(open_store(settings)) as store:
        Appender(log, stream, settings.partitions).append(simulate(60_000, viewers=200).events)
        deploy(settings, first, store, log)
        ends = log.end_offsets(stream.name)
        claims = store.claim(group, list(ends), "test")
        store.commit(group, [PartitionCommit(p, claims[p].generation, ends[p], b"")
                             for p in ends], {})  # fmt: skip
        stack = Stack(settings, quiet=True)
        versions = Versions(settings, [first], log, store, stack, 1)
        try:
            versions.follow()
            stack.resize(1)
            second = video_v2.create_app(settings)
            second.module = "video_v2"
            deploy(settings, second, store, log)
            versions.follow()
            assert list(stack.pools) == ["video@2"] and stack.pools["video@2"].size() == 1
            versions.tick()
            assert (stack.pool.size(), stack.pools["video@2"].size()) == (1, 2)
            live_workers = {w.process.pid for w in stack.workers.values()}

            store.promote("video", 2)
            versions.follow()
            assert list(stack.pools) == ["video@1"]
            assert {w.process.pid for w in stack.workers.values()}.isdisjoint(live_workers)
            store.retire("video", 1, [], [group])
            versions.follow()
            assert stack.pools == {} and [app.ref for app in versions.running] == ["video@2"]
        finally:
            stack.stop()
