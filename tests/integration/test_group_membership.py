"""Workers on Kafka as they run on Kubernetes: members of the consumer group, which
assigns them partitions (cooperative-sticky). A member is SIGKILLed mid-stream and
another joins; a member is paused past its session timeout and then resumes. The group
moves partitions between them, the store's generations fence the member that lost
them, and every result table equals an uninterrupted run's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kappaflow.apps.clicks.app import Click
from kappaflow.apps.clicks.app import create_app as create_clicks
from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.sim import simulate
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing import result_tables, run_events, wait_until

pytestmark = pytest.mark.integration
TABLES = ("video_segments", "video_progress", "kf_dead_letters")
OWNS_SOME = re.compile(r"owns partitions \[\d")
SESSION_TIMEOUT_S = 6
"""A member that stops answering leaves the group after this (the broker's least)."""


SLOW_VIDEO = """
import time
from kappaflow.apps.video.app import create_app as video

def create_app(settings):
    app = video(settings)
    processor = app.processors["heartbeats"]
    process = processor.process

    def slowly(state, batch):
        time.sleep(0.2)
        return process(state, batch)

    processor.process = slowly
    return app
"""
"""The video app, whose processor spends most of a member's time: a pause then comes
between its read of a batch and its commit of the batch, nearly always."""


class Members:
    """`kappaflow worker` processes in the consumer group, and the log they read."""

    def __init__(self, tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str) -> None:
        self.tmp_path = tmp_path
        self.workload = simulate(30_000, viewers=200, seed=9, jitter_ms=2_000, duplicates=0.01)
        # Progress rows on every change: at an accuracy, which are written depends on the
        # batches.
        base = {"partitions": 4, "idle_timeout_s": 3600, "batch_max_events": 300,
                "video_progress_accuracy_s": 0}  # fmt: skip
        self.reference = Settings.load({}, {**base, "data_dir": str(tmp_path / "reference")})
        self.settings = Settings.load({}, {
            **base, "data_dir": str(tmp_path / "kafka"), "log": "kafka", "store": "postgres",
            "kafka_bootstrap_servers": kafka_bootstrap, "postgres_dsn": postgres_dsn,
            "kafka_client_config": (f"session.timeout.ms={SESSION_TIMEOUT_S * 1000}",
                                    "heartbeat.interval.ms=500"),
        })  # fmt: skip
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.writer = open_log(self.settings, writer=True)
        stream = create_app(self.settings).streams[0]
        self.appender = Appender(self.writer, stream, self.settings.partitions)

    def start(self, slow: bool = False, app: str | None = "video") -> subprocess.Popen[bytes]:
        """A member of ``app``'s group (None: of every app stream's); ``slow``: its
        processor takes 0.2 s a batch more (see `SLOW_VIDEO`)."""
        command = [sys.executable, "-m", "kappaflow", "worker", "-v",
                   *(["--app", app] if app else [])]  # fmt: skip
        env = {**os.environ, **self.settings.to_environ()}
        if slow:
            (self.tmp_path / "slow_video.py").write_text(SLOW_VIDEO)
            path = [str(self.tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
            env.update(KAPPAFLOW_APPS="slow_video", PYTHONPATH=os.pathsep.join(path))
        output = self.tmp_path / f"worker-{len(self.started)}.log"
        with output.open("wb") as sink:
            self.started.append((subprocess.Popen(command, env=env, stderr=sink), output))
        return self.started[-1][0]

    def output(self, process: subprocess.Popen[bytes]) -> str:
        return next(path for p, path in self.started if p is process).read_text()

    def append(self, events: Sequence[object], step: int = 1_000, pause_s: float = 0) -> None:
        for start in range(0, len(events), step):
            self.appender.append(events[start : start + step])
            time.sleep(pause_s)

    def committed(self, group: str = "video.heartbeats") -> dict[int, int]:
        store = open_store(self.settings)
        try:
            return store.committed_offsets(group)
        finally:
            store.close()

    def wait_caught_up(
        self, timeout_s: float = 90, topic: str = "heartbeats", group: str = "video.heartbeats"
    ) -> None:
        ends = self.writer.end_offsets(topic)
        wait_until(lambda: all(self.committed(group).get(p, -1) >= e for p, e in ends.items()),
                   timeout_s, f"the members committed {group} up to {ends}")  # fmt: skip

    def stop(self) -> None:
        """SIGTERM every member still running and wait for it."""
        for process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(30)

    def close(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.writer.close()

    def results_equal_an_uninterrupted_run(self) -> bool:
        run_events(create_app(self.reference), self.workload.events, self.reference).close()
        return result_tables(self.settings, TABLES) == result_tables(self.reference, TABLES)


@pytest.fixture
def members(tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str) -> Iterator[Members]:
    group = Members(tmp_path, kafka_bootstrap, postgres_dsn)
    yield group
    group.close()


def test_group_assigned_workers_survive_a_kill_and_a_rebalance(members: Members) -> None:
    feeder = threading.Thread(target=members.append, args=(members.workload.events,),
                              kwargs={"pause_s": 0.05})  # fmt: skip
    first, second = members.start(), members.start()
    feeder.start()
    time.sleep(4)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    third = members.start()
    feeder.join()
    members.wait_caught_up()
    members.stop()
    logs = [members.output(process) for process in (second, third)]
    assert any("gave up partitions" in text or "owns partitions" in text for text in logs)
    assert members.results_equal_an_uninterrupted_run()


def test_a_member_of_every_app_stream_follows_each_streams_group(members: Members) -> None:
    """One `kappaflow worker` for both apps joins both groups (a consumer each) and
    processes both streams."""
    clicks = create_clicks(members.settings).streams[0]
    members.writer.create_topic(clicks.name, members.settings.partitions)
    t = int(time.time()) - 60
    Appender(members.writer, clicks, members.settings.partitions).append(
        [Click(t=t, u=f"https://example.org/{i}") for i in range(200)]
    )
    members.append(members.workload.events[:2_000])
    members.start(app=None)
    members.wait_caught_up()
    members.wait_caught_up(topic="clicks", group="clicks.clicks")
    members.stop()


def test_a_member_paused_past_its_session_is_fenced_and_rejoins(members: Members) -> None:
    """SIGSTOP a member busy with a backlog until the group gives its partitions to the
    other one, which claims them in the store; SIGCONT: the commit of the batch it was
    on is refused (its generation is stale), it drops the batch and rejoins, and the
    results stay exact. A pause may catch the member outside a batch, or inside its
    store transaction (the other one's claim then waits for its commit): it is tried
    again."""
    events = members.workload.events
    first, second = members.start(slow=True), members.start()
    members.append(events[:3_000])
    members.wait_caught_up()
    wait_until(lambda: OWNS_SOME.search(members.output(first)), 30, "the group gave it partitions")
    chunks = [events[3_000:12_000], events[12_000:21_000], events[21_000:]]
    while chunks and "was fenced" not in members.output(first):
        chunk = chunks.pop(0)
        members.append(chunk, step=len(chunk))
        time.sleep(0.3)  # into the backlog: it reads, processes and commits without a pause
        first.send_signal(signal.SIGSTOP)
        time.sleep(SESSION_TIMEOUT_S + 4)
        first.send_signal(signal.SIGCONT)
        members.wait_caught_up()
        owned = len(OWNS_SOME.findall(members.output(first)))
        wait_until(lambda n=owned: len(OWNS_SOME.findall(members.output(first))) > n, 30,
                   "the group gave it partitions again")  # fmt: skip
    for chunk in chunks:
        members.append(chunk)
    members.wait_caught_up()
    members.stop()
    paused = members.output(first)
    assert "was fenced" in paused and "rejoining the group" in paused, paused
    assert first.returncode == 0 and second.returncode == 0, paused
    assert members.results_equal_an_uninterrupted_run()
