"""The stream worker against the real embedded log and SQLite store: bad records,
ownership fencing, idle flushing and restore after a restart."""

from __future__ import annotations

import msgspec
import pytest

from kappaflow.apps.video import Heartbeat, all_progress, create_app
from kappaflow.errors import StaleOwnership
from kappaflow.log import open_log, partition_for
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.worker import Worker

encode = msgspec.json.Encoder().encode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(settings: Settings, clock: Clock | None = None, partitions=None) -> Worker:
    app = create_app(settings)
    parts = range(settings.partitions) if partitions is None else partitions
    kwargs = {"clock": clock} if clock else {}
    return Worker(
        app, app.streams[0], open_log(settings), open_store(settings), settings, parts, **kwargs
    )


def append(settings: Settings, partition: int, values: list[bytes]) -> None:
    log = open_log(settings, writer=True)
    try:
        log.create_topic("heartbeats", settings.partitions)
        log.append("heartbeats", partition, values)
    finally:
        log.close()


def beat(ts_s: int, position: float, user: str = "u") -> bytes:
    return encode(Heartbeat(user, "v", position, ts_s * 1000, "heartbeat"))


def drain(w: Worker) -> None:
    while w.poll():
        pass


def test_undecodable_records_are_dead_lettered_and_the_partition_keeps_flowing(
    settings: Settings,
) -> None:
    p = partition_for("u", settings.partitions)
    records = [
        beat(0, 0),
        b'{"user_id": "u", "video_id": "v", "posi',  # truncated JSON
        b"\xff\xfe binary garbage",
        b'{"user_id": "u", "video_id": "v", "position_s": "ten", "ts": 1}',  # wrong type
        b'{"user_id": "u", "ts": 5000}',  # missing video_id and position
        beat(5, 5),
        beat(10, 10),
    ]
    append(settings, p, records)
    w = worker(settings)
    w.start()
    drain(w)
    dead = w.store.dead_letters("video.heartbeats")
    assert [(part, offset) for part, offset, _, _ in dead] == [(p, 1), (p, 2), (p, 3), (p, 4)]
    assert all(reason.startswith("undecodable: ") for _, _, reason, _ in dead)
    assert "position_s" in dead[2][2] and "video_id" in dead[3][2]
    assert [payload for *_, payload in dead] == records[1:5]
    assert w.store.committed_offsets("video.heartbeats")[p] == len(records)
    (got,) = all_progress(w.store)
    assert got.resume_position_s == 10 and got.intervals == [[0, 10]]
    assert w.stats.undecodable == 4 and w.stats.events == len(records)


def test_a_worker_with_a_stale_generation_cannot_commit(settings: Settings) -> None:
    p = partition_for("u", settings.partitions)
    append(settings, p, [beat(0, 0)])
    old = worker(settings)
    old.start()
    new = worker(settings, partitions=[p])
    new.start()  # takes over the partition: bumps its generation
    with pytest.raises(StaleOwnership, match=f"partition {p}"):
        old.poll()
    assert new.store.committed_offsets("video.heartbeats")[p] == 0
    assert all_progress(new.store) == []
    assert new.poll() == 1
    assert new.store.committed_offsets("video.heartbeats")[p] == 1


def test_idle_timeout_closes_open_sessions_without_new_events(settings: Settings) -> None:
    settings = settings.replace(idle_timeout_s=30, session_gap_s=10, allowed_lateness_s=30)
    p = partition_for("u", settings.partitions)
    append(settings, p, [beat(0, 0), beat(5, 5), beat(10, 10)])
    clock = Clock()
    w = worker(settings, clock)
    w.start()
    drain(w)
    segments = "SELECT start_s, end_s FROM video_segments"
    assert w.store.query(segments) == [], "the session is still open"
    assert all_progress(w.store)[0].intervals == [[0, 10]], "open sessions count in progress"
    clock.now += 29
    w.poll()
    assert w.store.query(segments) == []
    clock.now += 2
    w.poll()
    assert w.store.query(segments) == [(0, 10)]
    assert all_progress(w.store)[0].intervals == [[0, 10]]


def test_restart_restores_offsets_and_open_sessions(settings: Settings) -> None:
    p = partition_for("u", settings.partitions)
    append(settings, p, [beat(0, 0), beat(5, 5)])
    first = worker(settings)
    first.start()
    drain(first)
    first.store.close()
    append(settings, p, [beat(10, 10), beat(15, 15), beat(100, 90)])
    second = worker(settings)
    second.start()
    assert second.runs[p].next_offset == 2
    drain(second)
    rows = second.store.query("SELECT start_s, end_s FROM video_segments")
    assert rows == [(0, 15)], "the session opened before the restart continued after it"
    assert all_progress(second.store)[0].resume_position_s == 90


def test_run_until_caught_up_stops_at_the_end_of_the_log(settings: Settings) -> None:
    for n in range(3):
        user = f"user-{n}"
        append(settings, partition_for(user, settings.partitions), [beat(0, 0, user)])
    w = worker(settings)
    w.start()
    w.run(lambda: False, until_caught_up=True)
    assert w.caught_up()
    assert len(all_progress(w.store)) == 3
