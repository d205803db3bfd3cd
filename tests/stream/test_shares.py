"""Share files: how ``kappaflow up`` changes a running worker's partitions."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest

from kappaflow.apps.video.app import Heartbeat, create_app
from kappaflow.log import open_log, partition_for
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.assignment import Shares
from kappaflow.stream.shares import BadShareFile, ShareFile
from kappaflow.stream.worker import Worker, run_workers
from kappaflow.testing import wait_until


def test_a_request_is_read_once_and_acknowledged_beside_it(tmp_path: Path) -> None:
    asked, worker_side = ShareFile(tmp_path / "0"), ShareFile(tmp_path / "0")
    assert worker_side.changed() is None, "no request yet"
    asked.offer([3, 1])
    assert worker_side.pending() and worker_side.pending(), "pending until read"
    assert worker_side.changed() == [1, 3]
    assert not worker_side.pending()
    assert worker_side.changed() is None, "unchanged since"
    asked.offer([1, 3])
    assert worker_side.changed() is None, "the same share again"
    asked.offer([])
    assert worker_side.changed() == []
    assert asked.owned() is None
    worker_side.acknowledge([])
    assert asked.owned() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "0.owned"], "no temporary left"
    asked.offer_anew([2])
    assert asked.owned() is None, "a new worker has said nothing yet"
    assert worker_side.changed() == [2]


@pytest.mark.parametrize("content", [b'{"partitions": [1]}', b"[1, -2]", b"[1,"])
def test_a_share_file_that_is_not_a_list_of_partitions_is_named(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "0").write_bytes(content)
    with pytest.raises(BadShareFile, match="not a list of partition numbers"):
        ShareFile(tmp_path / "0").changed()


def test_a_running_worker_takes_its_new_share_between_polls(settings: Settings) -> None:
    p = partition_for("u", settings.partitions)
    writer = open_log(settings, writer=True)
    writer.create_topic("heartbeats", settings.partitions)
    writer.append("heartbeats", p, [msgspec.json.encode(Heartbeat("u", "v", 0, 0))])
    writer.close()
    app = create_app(settings)
    share = ShareFile(Path(settings.data_dir) / "share")
    w = Worker(app, app.streams[0], open_log(settings), open_store(settings), settings,
               Shares(share, range(settings.partitions)))  # fmt: skip
    w.start()
    share.offer([p])
    run_workers([w], lambda: w.stats.commits > 0)
    assert sorted(w.runs) == [p] and w.partitions == [p]
    assert share.owned() == [p]
    assert w.stats.events == 1


def test_a_waiting_worker_wakes_for_a_new_share_and_to_stop(settings: Settings) -> None:
    waits_a_minute = settings.replace(poll_interval_ms=60_000)
    app = create_app(waits_a_minute)
    share = ShareFile(Path(settings.data_dir) / "share")
    w = Worker(app, app.streams[0], open_log(waits_a_minute), open_store(waits_a_minute),
               waits_a_minute, Shares(share))  # fmt: skip
    w.start()
    share.offer([])
    stop = threading.Event()
    runner = threading.Thread(target=run_workers, args=([w], stop.is_set))
    runner.start()
    try:
        wait_until(lambda: share.owned() == [], 5, "the first share is taken at once", 0.005)
        share.offer([1])  # the worker now waits out its poll interval with nothing to read
        wait_until(lambda: share.owned() == [1], 5, "a new share ends the wait", 0.005)
        assert w.partitions == [1]
    finally:
        stop.set()
        runner.join(timeout=5)
    assert not runner.is_alive(), "a stop ends the wait"


def test_the_worker_command_refuses_a_share_file_it_cannot_use(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kappaflow.cli import main

    def worker(*options: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["worker", "--data-dir", str(tmp_path), *options])
        return result.exit_code, result.output

    missing = str(tmp_path / "missing")
    code, output = worker("--share-file", missing)
    assert code == 2 and "--share-file" in output and "does not exist" in output
    code, output = worker("--share-file", missing, "--partitions", "0")
    assert code == 2 and "exclude each other" in output
    (tmp_path / "bad").write_bytes(b"0,2")
    code, output = worker("--share-file", str(tmp_path / "bad"))
    assert code == 1 and "not a list of partition numbers" in output
