"""The stream worker against the real embedded log and SQLite store: bad records,
ownership fencing, idle flushing and restore after a restart."""

from __future__ import annotations

import logging
import time
from contextlib import closing
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kappaflow.apps.clicks.app import Click
from kappaflow.apps.clicks.app import create_app as create_clicks
from kappaflow.apps.video.app import Heartbeat, all_progress, create_app
from kappaflow.errors import LogUnavailable, OffsetOutOfRange, ProcessorFailed, StaleOwnership
from kappaflow.events import MAX_EVENT_MS
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log, partition_for
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream import worker as worker_module
from kappaflow.stream.lateness import late_reason
from kappaflow.stream.worker import _NO_EVENT, RETRY_S, Worker, _late, run_workers
from kappaflow.testing import wait_until

encode = msgspec.json.Encoder().encode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(settings: Settings, clock: Clock | None = None, partitions=None) -> Worker:
    app = create_app(settings)
    parts = range(settings.partitions) if partitions is None else partitions
    kwargs = {"clock": clock, "wall_clock": clock} if clock else {}
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
    while w.poll() or w.behind:
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


def test_late_records_are_dead_lettered_against_their_own_key(settings: Settings) -> None:
    """The video app judges lateness per (user, video): each record more than the
    lateness before its key's latest, in its batch or an earlier one, is refused."""
    settings = settings.replace(allowed_lateness_s=5)
    p = partition_for("u", settings.partitions)
    first = [beat(100, 0), beat(96, 1), beat(94, 2), b"not json", beat(120, 3), beat(114, 4)]
    append(settings, p, first)
    w = worker(settings)
    w.start()
    drain(w)
    append(settings, p, [beat(116, 5), beat(114, 6), beat(200, 7)])
    drain(w)
    late = [(offset, reason) for _, offset, reason, _ in w.store.dead_letters("video.heartbeats")
            if reason.startswith("late")]  # fmt: skip
    assert late == [
        (2, late_reason(94_000, 100_000, 5_000)),
        (5, late_reason(114_000, 120_000, 5_000)),  # raised in its batch
        (7, late_reason(114_000, 120_000, 5_000)),  # kept from the last
    ]
    assert w.stats.refused == 3 and w.stats.late == 0 and w.stats.undecodable == 1
    assert w.runs[p].max_event_ms == 200_000
    (got,) = all_progress(w.store)
    assert got.resume_position_s == 7


def test_a_clock_far_ahead_makes_no_other_click_late(settings: Settings) -> None:
    """Windows over all keys judge lateness by the partition's highest event time, but
    counted no further than the wall clock: clicks from a clock hours or years ahead
    (in the log from before ingest refused them) make no click of now late, before or
    after a restore, nor after an idle time."""
    clicks = create_clicks(settings)
    stream = clicks.streams[0]
    now = int(time.time())
    log = open_log(settings, writer=True)
    appender = Appender(log, stream, settings.partitions)
    ahead = [Click(t=now + 3_600, g="k"), Click(t=MAX_EVENT_MS // 1000, g="k")]
    appender.append([*ahead, Click(t=now - 5, g="k"), Click(t=now, g="k")])
    clock = Clock()

    def run() -> Worker:
        # The wall clock stays at ``now``: the idle time moves the event clock up to it,
        # and a click it has passed would be late.
        w = Worker(clicks, stream, open_log(settings), open_store(settings), settings,
                   range(settings.partitions), clock, lambda: now)  # fmt: skip
        w.start()
        drain(w)
        return w

    w = run()
    clock.now += settings.idle_timeout_s + 1  # an idle time: the event clock moves on
    drain(w)
    w.store.close()
    w.log.close()
    appender.append([Click(t=now + 1, g="k")])
    w = run()
    log.close()
    with closing(w.store), closing(w.log):
        assert w.stats.late == 0
        assert w.store.dead_letters("clicks.clicks") == []
        counted = w.store.query("SELECT SUM(events) FROM click_counts_1m "
                                "WHERE dimension = 'country'")  # fmt: skip
    assert counted == [(5,)]


def test_duplicates_are_dead_lettered_with_their_own_record(settings: Settings) -> None:
    p = partition_for("u", settings.partitions)
    retried = encode(Heartbeat("u", "v", 5.0, 5_000, event_id="e5"))  # same item as beat(5, 5)
    records = [beat(0, 0), b"not json", beat(5, 5), retried, beat(5, 5), retried, beat(10, 10)]
    append(settings, p, records)
    w = worker(settings)
    w.start()
    drain(w)
    dead = [(offset, reason, payload)
            for _, offset, reason, payload in w.store.dead_letters("video.heartbeats")]  # fmt: skip
    assert dead[0][0] == 1 and dead[0][1].startswith("undecodable")
    # The video app refuses an event equal to one pending (3 and 4); the worker, a retry
    # of an id earlier in the batch (5).
    assert dead[1:] == [(3, "duplicate", retried), (4, "duplicate", records[4]),
                        (5, "duplicate: event_id 'e5' of an earlier event of its key",
                         retried)]  # fmt: skip
    assert w.stats.refused == 2 and w.stats.duplicates == 1


def test_a_worker_behind_polls_again_at_once_and_one_that_keeps_up_waits(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a poll that read a full batch, more records wait: pausing for the commit
    interval then would only slow the catching up."""
    settings = settings.replace(batch_max_events=10, commit_interval_ms=250)
    append(settings, partition_for("u", settings.partitions), [beat(t, t) for t in range(35)])
    w = worker(settings)
    w.start()
    happened: list[tuple[str, int | bool]] = []
    poll = w.poll

    def counted_poll() -> int:
        records = poll()
        happened.append(("poll", records))
        return records

    monkeypatch.setattr(w, "poll", counted_poll)
    monkeypatch.setattr(worker_module, "_sleep", lambda s, *_: happened.append(("pause", s > 0.1)))
    run_workers([w], lambda: ("pause", True) in happened)
    assert happened == [("poll", 10), ("poll", 10), ("poll", 10), ("poll", 5), ("pause", True)]


def test_a_run_until_caught_up_ends_with_its_last_batch_not_a_pause(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the last records are committed there is nothing left to wait for."""
    settings = settings.replace(batch_max_events=10, commit_interval_ms=250)
    append(settings, partition_for("u", settings.partitions), [beat(t, t) for t in range(25)])
    w = worker(settings)
    w.start()
    pauses: list[float] = []
    monkeypatch.setattr(worker_module, "_sleep", lambda s, *_: pauses.append(s))
    run_workers([w], lambda: False, until_caught_up=True)
    assert w.stats.events == 25 and w.caught_up()
    assert pauses == []


@given(
    times=st.lists(st.integers(0, MAX_EVENT_MS), max_size=50),
    max_event=st.sampled_from([_NO_EVENT, 0, 10**12, MAX_EVENT_MS]),
    floor=st.sampled_from([_NO_EVENT, 0, 10**12]),
    lateness=st.integers(0, 10**7),
    now=st.sampled_from([0, 10**12, 1_800_000_000_000, MAX_EVENT_MS]),
)
def test_late_events_are_those_below_the_highest_time_before_them_up_to_now_less_the_lateness(
    times: list[int], max_event: int, floor: int, lateness: int, now: int
) -> None:
    expected, highest = [], max_event
    for i, event_ms in enumerate(times):
        watermark = max(floor, min(highest, now) - lateness)
        if event_ms < watermark:
            expected.append((i, watermark))
        highest = max(highest, event_ms)
    assert _late(times, max_event, floor, lateness, now) == expected


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
    settings = settings.replace(idle_timeout_s=30, video_session_gap_s=10, allowed_lateness_s=30)
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


def test_a_worker_that_falls_behind_closes_no_session_early(settings: Settings) -> None:
    """Time passes for idleness only while the worker reads all a partition has: a
    worker held up for longer than the idle time (a full backlog waiting) closes no
    session whose events are in that backlog, and closes the others once it caught up
    and the idle time has passed."""
    settings = settings.replace(idle_timeout_s=30, batch_max_events=5)
    p = partition_for("u", settings.partitions)
    q = next(user for user in (f"v{n}" for n in range(100)) if partition_for(user, 4) == p)
    append(settings, p, [beat(0, 0), beat(0, 0, user=q)])
    clock = Clock()
    w = worker(settings, clock)
    w.start()
    drain(w)
    clock.now += 60  # held up, while both sessions go on: a backlog, q's at its end
    append(settings, p, [beat(t, t) for t in range(5, 65, 5)])
    append(settings, p, [beat(5, 5, user=q), beat(10, 10, user=q)])
    while w.poll() == settings.batch_max_events:
        pass
    segments = "SELECT user_id, start_s, end_s FROM video_segments ORDER BY 1"
    assert w.store.query(segments) == [], "nothing closed: the keys' time stood still"
    clock.now += 31
    w.poll()
    assert w.store.query(segments) == [("u", 0, 60), (q, 0, 10)]


def test_keys_idle_for_longer_than_the_partition_close_while_it_stays_quiet(
    settings: Settings,
) -> None:
    """The partition's own idle time passes once; an operator timing its keys out after
    longer still gets the quiet partition's empty batches, and closes them."""
    settings = settings.replace(idle_timeout_s=30)
    p = partition_for("u", settings.partitions)
    append(settings, p, [beat(0, 0), beat(5, 5)])
    clock = Clock()
    w = worker(settings, clock)
    w.processor.idle_ms = 90_000
    w.start()
    drain(w)
    segments = "SELECT start_s, end_s FROM video_segments"
    for _ in range(60):  # a minute of polls a second apart
        clock.now += 1
        w.poll()
    assert w.store.query(segments) == []
    for _ in range(31):
        clock.now += 1
        w.poll()
    assert w.store.query(segments) == [(0, 5)]


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
    ends = w.log.end_offsets("heartbeats")
    assert w.log.acknowledged(w.group, "heartbeats") == w.store.committed_offsets(w.group) == ends


def test_reads_that_only_step_over_control_records_are_committed(
    settings: Settings, kafka_bootstrap: str
) -> None:
    """On Kafka each append's commit leaves a control record no reader gets: a worker
    whose next read starts there commits the offset after it, so its lag reaches 0."""
    on_kafka = settings.replace(log="kafka", kafka_bootstrap_servers=kafka_bootstrap)
    p = partition_for("u", settings.partitions)
    append(on_kafka, p, [beat(0, 0), beat(5, 5)])  # offsets 0 and 1, the control record 2
    w = worker(on_kafka)
    wait_until(lambda: w.log.end_offsets("heartbeats")[p] == 3, 5, "the control record")
    w.start()
    w.runs[p].next_offset = 2  # as restored from a commit made before it was read
    for _ in range(100):
        w.poll()
        if w.caught_up():
            break
    assert w.store.committed_offsets(w.group)[p] == 3 == w.log.end_offsets("heartbeats")[p]
    w.log.close()


class FailsOn:
    """The video app's processor with a bug: it raises on a batch holding ``user``'s
    events, until ``fixed``, after changing the state (as a bug midway would)."""

    def __init__(self, processor: Any, user: str) -> None:
        self.processor, self.user, self.fixed = processor, user, False

    def process(self, state: Any, batch: Any) -> Any:
        output = self.processor.process(state, batch)
        if not self.fixed and any(event.user_id == self.user for event in batch.events):
            raise ValueError(f"cannot handle {self.user}")
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


def test_a_record_the_processor_fails_on_is_dead_lettered_and_the_partition_goes_on(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch is read again in halves down to the record at fault, which goes to the
    dead letters with the error; the records around it, and the other partitions, are
    processed once each, and the half-changed state is not kept."""
    settings = settings.replace(video_progress_accuracy_s=0)
    p = partition_for("poison", settings.partitions)
    users = (f"user-{n}" for n in range(100))
    neighbours = [u for u in users if partition_for(u, settings.partitions) == p][:6]
    others = [u for u in (f"other-{n}" for n in range(100))
              if partition_for(u, settings.partitions) != p][:3]  # fmt: skip
    records = [beat(0, 0, user) for user in neighbours[:3]]
    records += [beat(0, 0, "poison")] + [beat(0, 0, user) for user in neighbours[3:]]
    append(settings, p, records)  # one batch of p, the poison at offset 3
    for user in others:
        append(settings, partition_for(user, settings.partitions), [beat(0, 0, user)])
    w = worker(settings)
    w.processor = FailsOn(w.processor, "poison")
    w.start()
    with caplog.at_level(logging.ERROR, logger="kappaflow.worker"):
        drain(w)
    (letter,) = w.store.dead_letters(w.group)
    assert letter[:3] == (p, 3, "processor: ValueError: cannot handle poison")
    assert f"partition {p}, offset 3: processor: ValueError" in caplog.text
    assert {row.user_id for row in all_progress(w.store)} == {*neighbours, *others}
    assert w.store.committed_offsets(w.group)[p] == 7 and not w.halted
    assert not w.isolating, "read as usual again once past the poison"


class FailsWhenEmpty(FailsOn):
    """The video app's processor with a bug on batches without events (the idle ones) of
    the partition of ``user``."""

    def process(self, state: Any, batch: Any) -> Any:
        mine = batch.partition == partition_for(self.user, 4)
        if not self.fixed and not batch.events and mine:
            raise ValueError("cannot time out")
        return self.processor.process(state, batch)


def test_a_processor_that_raises_without_a_record_halts_its_partition(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """No record to set aside: the partition halts at its next offset, is noted in the
    store for the dashboard, and is tried again after 30 s, then twice as long."""
    clock = Clock()
    p = partition_for("u", settings.partitions)
    append(settings, p, [beat(0, 0)])
    w = worker(settings, clock)
    failing = w.processor = FailsWhenEmpty(w.processor, "u")
    w.start()
    drain(w)
    clock.now += settings.idle_timeout_s + 1
    with caplog.at_level(logging.ERROR, logger="kappaflow.worker"):
        w.poll()
    assert list(w.halted) == [p] and w.halted[p].noted.offset == 1
    assert w.halted[p].noted.error == "ValueError: cannot time out"
    assert f"raised on partition {p} at offset 1" in caplog.text
    assert w.store.halts(w.group) == {p: w.halted[p].noted}  # for the dashboard
    assert w.halted[p].noted.retry_at - w.halted[p].noted.since == RETRY_S
    w.start()  # claimed again, as after the store was out: still halted, and noted
    assert list(w.halted) == [p] and w.store.halts(w.group) == {p: w.halted[p].noted}
    with pytest.raises(ProcessorFailed, match=f"partition {p} halted at offset 1"):
        w.run(lambda: False, until_caught_up=True)
    clock.now += RETRY_S  # tried again from the store: it raises again, waits twice as long
    w.poll()
    clock.now += settings.idle_timeout_s + 1
    w.poll()
    assert w.halted[p].retry_at == clock.now + 2 * RETRY_S
    failing.fixed = True
    clock.now += 2 * RETRY_S
    w.poll()
    clock.now += settings.idle_timeout_s + 1
    drain(w)
    assert not w.halted and w.store.halts(w.group) == {}
    assert w.store.query("SELECT count(*) FROM video_progress") == [(1,)]


def test_a_record_the_store_cannot_hold_is_dead_lettered_and_the_others_go_on(
    settings: Settings, postgres_dsn: str
) -> None:
    """PostgreSQL refuses a NUL in text: the commit of several partitions is refused;
    each then commits alone, the one at fault in halves down to the click, which goes
    to the dead letters with the store's error; every other click is counted."""
    on_postgres = settings.replace(store="postgres", postgres_dsn=postgres_dsn)
    clicks = create_clicks(on_postgres)
    stream = clicks.streams[0]
    now = int(time.time())
    log = open_log(on_postgres, writer=True)
    good = [Click(t=now, g=f"link-{n}", c="NL") for n in range(40)]
    Appender(log, stream, on_postgres.partitions).append(
        [*good[:20], Click(t=now, g="x", c="N\x00L"), *good[20:]]
    )
    log.close()
    w = Worker(clicks, stream, open_log(on_postgres), open_store(on_postgres), on_postgres,
               range(on_postgres.partitions))  # fmt: skip
    w.start()
    for _ in range(200):
        w.poll()
        if w.caught_up() and not w.isolating:
            break
    (letter,) = w.store.dead_letters(w.group)
    assert letter[0] == partition_for("x", on_postgres.partitions)
    assert letter[2].startswith("store: StoreError: ") and "NUL" in letter[2]
    counted = w.store.query("SELECT SUM(events) FROM click_counts_1m "
                            "WHERE dimension = 'country'")  # fmt: skip
    assert counted == [(40,)]
    assert w.caught_up() and not w.halted
    w.store.close()
    w.log.close()


def appended_heartbeats(settings: Settings) -> list[Any]:
    """Append 6,000 simulated heartbeats to ``settings``' log; returns the progress rows
    a run of them gives (``settings`` must leave them alike whatever the batches:
    ``video_progress_accuracy_s`` 0)."""
    from kappaflow.apps.video.sim import simulate
    from kappaflow.testing import run_events

    events = simulate(6_000, viewers=20, seed=2, jitter_ms=1_000).events
    reference = settings.replace(data_dir=settings.data_dir + "-reference", store="sqlite")
    expected = all_progress(run_events(create_app(reference), events, reference))
    writer = open_log(settings, writer=True)
    Appender(writer, create_app(settings).streams[0], 4).append(events)
    writer.close()
    return expected


def test_a_lost_database_connection_is_recovered_without_loss_or_repeats(
    settings: Settings, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kappaflow.testing import drop_postgres_connections

    on_postgres = settings.replace(store="postgres", postgres_dsn=postgres_dsn,
                                   video_progress_accuracy_s=0, batch_max_events=60)  # fmt: skip
    expected = appended_heartbeats(on_postgres)
    w = worker(on_postgres)
    w.start()
    commit, commits = w.store.commit, {"n": 0}

    def commit_on_a_connection_cut_now_and_then(*args, **kwargs) -> None:
        commits["n"] += 1
        if commits["n"] % 5 == 2:  # the server drops us just before the commit
            drop_postgres_connections(postgres_dsn)
        commit(*args, **kwargs)

    w.store.commit = commit_on_a_connection_cut_now_and_then  # type: ignore[method-assign]
    run_workers([w], lambda: False, until_caught_up=True)
    assert commits["n"] > 10
    assert "restoring from the store" in caplog.text
    assert all_progress(w.store) == expected
    w.store.close()


def test_reads_that_fail_now_and_then_are_recovered_without_loss_or_repeats(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A log that cannot be read on for a moment (a Kafka broker gone, a consumer that
    stopped fetching as a leader moved) is waited out, as a lost store is."""
    settings = settings.replace(video_progress_accuracy_s=0, batch_max_events=60)
    expected = appended_heartbeats(settings)
    w = worker(settings)
    w.start()
    read, reads = w.log.read, {"n": 0}

    def read_that_fails_now_and_then(*args: Any) -> Any:
        reads["n"] += 1
        if reads["n"] % 7 == 3:
            raise LogUnavailable("Kafka: broker transport failure")
        if reads["n"] % 7 == 5:
            raise OffsetOutOfRange("Kafka: Local: No offset to automatically reset to")
        return read(*args)

    w.log.read = read_that_fails_now_and_then  # type: ignore[method-assign]
    run_workers([w], lambda: False, until_caught_up=True)
    assert reads["n"] > 20
    assert "broker transport failure; restoring from the store" in caplog.text
    assert "No offset to automatically reset to; restoring from the store" in caplog.text
    assert all_progress(w.store) == expected
    w.store.close()
    w.log.close()


def test_a_worker_hands_partitions_over_and_takes_them_back_without_a_restart(
    settings: Settings,
) -> None:
    """As ``kappaflow up`` scales 1 -> 2 -> 1 worker: the one that stays keeps the state
    of what it keeps, and the results equal an unmoved run's."""
    from kappaflow.apps.video.sim import simulate
    from kappaflow.testing import run_events

    # Progress rows on every change: at an accuracy, which are written depends on the batches.
    settings = settings.replace(
        idle_timeout_s=3600, batch_max_events=200, video_progress_accuracy_s=0
    )
    workload = simulate(6_000, viewers=40, seed=3, jitter_ms=1_000, duplicates=0.01)
    unmoved = settings.replace(data_dir=settings.data_dir + "-unmoved")
    expected = all_progress(run_events(create_app(unmoved), workload.events, unmoved))
    thirds = [workload.events[:2_000], workload.events[2_000:4_000], workload.events[4_000:]]

    def append_events(events: list[Heartbeat]) -> None:
        writer = open_log(settings, writer=True)
        Appender(writer, create_app(settings).streams[0], settings.partitions).append(events)
        writer.close()

    append_events(thirds[0])
    stays = worker(settings)
    stays.start()
    drain(stays)
    kept = {p: stays.runs[p] for p in (0, 2)}
    assert stays.own([0, 2]) == 0
    assert stays.runs == kept, "the partitions it keeps run on, not restored"
    joins = worker(settings, partitions=[1, 3])
    joins.start()
    append_events(thirds[1])
    drain(stays)
    drain(joins)
    assert stays.stats.events + joins.stats.events == 4_000
    assert joins.stats.events > 0
    assert stays.own([0, 1, 2, 3]) == 2, "it claims what the other one committed"
    append_events(thirds[2])
    drain(stays)
    assert all_progress(stays.store) == expected
    joins.runs[1].next_offset = 0  # had it not stopped, it would commit again: fenced
    with pytest.raises(StaleOwnership):
        joins.poll()
