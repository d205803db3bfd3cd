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
        stack, "_spawn", lambda *_: subprocess.Popen([sys.executable, "-c", program[0]])
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
