"""`Stack.resize` with real worker processes: the workers that stay run on, take their
new shares and say so; one that does not let go in time is stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kappaflow import up
from kappaflow.settings import Settings
from kappaflow.stream.shares import ShareFile
from kappaflow.testing import wait_until
from kappaflow.up import Stack, WorkerProcess

pytestmark = pytest.mark.integration


def owned_by_each(stack: Stack, timeout_s: float = 30) -> list[list[int] | None]:
    """What each worker says it owns, once that is its share."""

    def owned_if_shares() -> list[list[int] | None] | None:
        owned = [stack.workers[n].file.owned() for n in sorted(stack.workers)]
        return owned if owned == [stack.workers[n].share for n in sorted(stack.workers)] else None

    return wait_until(owned_if_shares, timeout_s, "each worker owns its share")


def test_workers_that_stay_run_on_with_their_new_shares(tmp_path: Path) -> None:
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})
    stack = Stack(settings, quiet=True)
    try:
        stack.start(1, serve=False)
        first = stack.workers[0].process
        assert owned_by_each(stack) == [[0, 1, 2, 3]]
        stack.resize(2)
        assert owned_by_each(stack) == [[0, 2], [1, 3]]
        assert stack.workers[0].process is first and first.poll() is None
        second = stack.workers[1].process
        stack.resize(1)
        assert owned_by_each(stack) == [[0, 1, 2, 3]]
        assert stack.workers[0].process is first and first.poll() is None
        assert second.poll() == 0, "the worker that went away finished and exited"
    finally:
        stack.stop()
    assert first.poll() == 0 and stack.size() == 0


def test_a_worker_that_does_not_let_go_in_time_is_stopped_and_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that never reads its share file (a plain sleep) stands in for a
    worker stuck in a batch."""
    monkeypatch.setattr(up, "STOP_TIMEOUT_S", 0.5)
    settings = Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})
    stack = Stack(settings, quiet=True)
    deaf = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    file = ShareFile(stack.shares / "0")
    file.offer([0, 1, 2, 3])
    stack.workers[0] = WorkerProcess(process=deaf, share=[0, 1, 2, 3], file=file)
    try:
        stack.resize(2)
        assert deaf.poll() is not None, "stopped"
        assert f"pid {deaf.pid} did not take its share within 0.5 s; stopping it" in caplog.text
        stack.check()
        assert stack.workers[0].process is not deaf
        assert owned_by_each(stack) == [[0, 2], [1, 3]]
    finally:
        stack.stop()
