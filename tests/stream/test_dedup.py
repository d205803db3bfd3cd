"""De-duplication of client retries by event id: the ids a partition remembers, and the
worker that drops a retry of an event it counted to the dead letters, on SQLite and on
PostgreSQL, across restarts and poison records."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest

from kappaflow.app import Stream
from kappaflow.apps.clicks.app import Click
from kappaflow.apps.clicks.app import create_app as create_clicks
from kappaflow.apps.video.app import Heartbeat, all_progress
from kappaflow.apps.video.app import create_app as create_video
from kappaflow.errors import AppError
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log, partition_for
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.dedup import SeenIds, event_ids
from kappaflow.stream.worker import Worker

NOW = int(time.time())


def test_a_repeat_is_an_id_counted_before_or_earlier_in_the_batch_never_none() -> None:
    seen = SeenIds(window_ms=1_000, max_ids=10, seen={"a": 5})
    assert seen.repeats(["b", None, "c", None]) == []
    assert seen.repeats(["b", "a", None, "b", None, "c", "b"]) == [1, 3, 6]
    seen.add(["b"], 5)
    assert seen.repeats(["b", "c"]) == [0]
    assert seen.changes() == {"b": 5} and seen.changes() == {}


def test_ids_are_forgotten_past_the_window_and_the_oldest_beyond_the_most_kept() -> None:
    seen = SeenIds(window_ms=1_000, max_ids=3, seen={"b": 1_500, "a": 1_000})
    seen.add(["c"], 2_000)
    assert seen.repeats(["a", "b", "c"]) == [0, 1, 2], "within the window: all remembered"
    seen.add([], 2_001)
    assert seen.repeats(["a", "b", "c"]) == [1, 2], "a was counted more than 1 s before"
    seen.add(["d", "e"], 2_001)
    assert seen.repeats(["b", "c", "d", "e"]) == [1, 2, 3], "at most 3: b forgotten"
    assert seen.changes() == {"c": 2_000, "a": None, "d": 2_001, "e": 2_001, "b": None}
    assert len(seen) == 3


def test_an_id_names_an_event_of_its_key_only() -> None:
    events = [Click(t=1, g="1", event_id="a"), Click(t=1, g="", event_id="a1"),
              Click(t=1, g="2", event_id="a"), Click(t=1, g="1")]  # fmt: skip
    ids = event_ids(events, "g", "event_id")
    assert ids[3] is None and len(set(ids[:3])) == 3


def test_a_stream_de_duplicates_by_a_string_field_only() -> None:
    assert Stream("clicks", Click, "g", "t", dedup_by="event_id").dedup_by == "event_id"
    for field in ("nk", "missing"):
        with pytest.raises(AppError, match=f"dedup_by='{field}' must name a field of Click"):
            Stream("clicks", Click, "g", "t", dedup_by=field)


# -- through the worker, on each store --------------------------------------------------


class Clicks:
    """The clicks app's stream: clicks appended as ingest appends them, and workers
    over every partition, each with a store connection of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_clicks(settings)
        self.stream = self.app.streams[0]
        self.workers: list[Worker] = []

    def post(self, *clicks: Click) -> None:
        log = open_log(self.settings, writer=True)
        try:
            Appender(log, self.stream, self.settings.partitions).append(list(clicks))
        finally:
            log.close()

    def worker(self) -> Worker:
        """A new worker, restored from the store (as after a crash, or on another
        machine); it processes what the log has."""
        w = Worker(self.app, self.stream, open_log(self.settings), open_store(self.settings),
                   self.settings, range(self.settings.partitions))  # fmt: skip
        self.workers.append(w)
        w.start()
        return self.drain(w)

    @staticmethod
    def drain(w: Worker) -> Worker:
        while w.poll() or w.behind or w.isolating:
            pass
        return w

    def close(self) -> None:
        for w in self.workers:
            w.store.close()
            w.log.close()


@pytest.fixture
def clicks(backend_settings: Settings) -> Iterator[Clicks]:
    stream = Clicks(backend_settings)
    yield stream
    stream.close()


def counted(w: Worker) -> int:
    """The clicks counted, in the minute windows by country."""
    rows = w.store.query("SELECT SUM(events) FROM click_counts_1m "
                         "WHERE dimension = 'country'")  # fmt: skip
    return rows[0][0] or 0


def dead(w: Worker) -> list[tuple[int, str]]:
    return [(offset, reason) for _, offset, reason, _ in w.store.dead_letters(w.group)]


def duplicate(id_: str) -> str:
    return f"duplicate: event_id '{id_}' of an earlier event of its key"


def test_a_retried_click_counts_once_and_its_retry_is_a_dead_letter(clicks: Clicks) -> None:
    """In a later batch or in the same one (two events of one request); clicks without
    an id are never de-duplicated."""
    click = Click(t=NOW, g="link", c="US", event_id="click-1")
    clicks.post(click)
    w = clicks.worker()
    assert counted(w) == 1
    clicks.post(click, Click(t=NOW, g="link", c="NL"), Click(t=NOW, g="link", c="NL"))
    clicks.post(*[Click(t=NOW, g="link", c="FR", event_id="click-2")] * 2)
    clicks.drain(w)
    assert counted(w) == 4
    assert dead(w) == [(1, duplicate("click-1")), (5, duplicate("click-2"))]
    (letter,) = w.store.dead_letters(w.group)[:1]
    assert msgspec.json.decode(letter[3], type=Click) == click, "the retry, as logged"
    assert w.stats.duplicates == 2


def test_a_retry_after_a_restart_is_still_a_duplicate(clicks: Clicks) -> None:
    """The ids counted are committed with the partition: a worker restored from the
    store (after a crash, or taking the partition over) drops the retry too."""
    click = Click(t=NOW, g="link", c="US", event_id="click-1")
    clicks.post(click)
    clicks.worker()
    clicks.post(click)
    w = clicks.worker()
    assert counted(w) == 1 and dead(w) == [(1, duplicate("click-1"))]


def test_an_id_of_another_key_counts(clicks: Clicks) -> None:
    partitions = clicks.settings.partitions
    links = [g for g in (f"link-{n}" for n in range(100))
             if partition_for(g, partitions) == partition_for("link", partitions)][:1]  # fmt: skip
    clicks.post(*[Click(t=NOW, g=g, c="US", event_id="1") for g in ("link", *links)])
    w = clicks.worker()
    assert counted(w) == 2 and dead(w) == []


def test_a_retry_past_the_window_counts_again(clicks: Clicks) -> None:
    """Past ``dedup_window_s`` of the partition's event time, an id is forgotten: its
    late retry counts again (unless it is late for the watermark)."""
    clicks.settings = clicks.settings.replace(dedup_window_s=2)
    click = Click(t=NOW - 10, g="link", c="US", event_id="click-1")
    clicks.post(click, Click(t=NOW - 9, g="link", c="NL"))
    w = clicks.worker()
    clicks.post(click)
    clicks.drain(w)
    assert dead(w) == [(2, duplicate("click-1"))], "1 s later: within the window"
    clicks.post(Click(t=NOW - 6, g="link", c="NL"))
    clicks.drain(w)
    clicks.post(click)
    clicks.drain(w)
    assert counted(w) == 4 and len(dead(w)) == 1, "3 s later: counted again"
    clicks.post(click)
    w = clicks.worker()
    assert dead(w)[1:] == [(5, duplicate("click-1"))], "remembered again, and restored"


def test_an_event_not_counted_leaves_its_id_to_its_replay(clicks: Clicks) -> None:
    """Only the ids of events counted are remembered: a late click, replayed (appended
    again) once the allowed lateness covers it, counts."""
    late = Click(t=NOW - 7200, g="link", c="US", event_id="late-1")
    clicks.post(Click(t=NOW, g="link", c="US"), late)
    w = clicks.worker()
    assert [reason.split(":")[0] for _, reason in dead(w)] == ["late"]
    clicks.settings = clicks.settings.replace(allowed_lateness_s=3 * 3600)
    clicks.post(late)
    w = clicks.worker()
    assert counted(w) == 2 and len(dead(w)) == 1


class FailsOn:
    """A processor with a bug: it raises on a batch holding a click from ``country``,
    after changing the state (as a bug midway would)."""

    def __init__(self, processor: Any, country: str) -> None:
        self.processor, self.country = processor, country

    def process(self, state: Any, batch: Any) -> Any:
        output = self.processor.process(state, batch)
        if any(event.c == self.country for event in batch.events):
            raise ValueError(f"cannot handle {self.country}")
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


def test_a_poison_record_beside_retries_leaves_each_id_counted_once(clicks: Clicks) -> None:
    """The batch is read again in halves from what the store holds: the ids a failed
    batch held are not remembered, those committed are."""
    clicks.post(
        Click(t=NOW, g="link", c="US", event_id="a"),
        Click(t=NOW, g="link", c="US", event_id="b"),
        Click(t=NOW, g="link", c="XX", event_id="poison"),
        Click(t=NOW, g="link", c="US", event_id="a"),
        Click(t=NOW, g="link", c="US", event_id="c"),
        Click(t=NOW, g="link", c="US", event_id="b"),
    )
    clicks.app.processors["clicks"] = FailsOn(clicks.app.processors["clicks"], "XX")
    w = clicks.worker()
    assert counted(w) == 3
    assert dead(w) == [(2, "processor: ValueError: cannot handle XX"), (3, duplicate("a")),
                      (5, duplicate("b"))]  # fmt: skip
    assert w.store.committed_offsets(w.group)[partition_for("link", 4)] == 6


def test_a_retried_heartbeat_counts_once(backend_settings: Settings) -> None:
    """After its session closed: the video app would take the retry for a new session,
    and the user's resume position would go back to it."""
    settings = backend_settings.replace(idle_timeout_s=30)
    app = create_video(settings)
    heartbeats = app.streams[0]

    def post(*beats: Heartbeat) -> None:
        log = open_log(settings, writer=True)
        Appender(log, heartbeats, settings.partitions).append(list(beats))
        log.close()

    def beat(ts_s: int) -> Heartbeat:
        return Heartbeat("u", "v", float(ts_s), (NOW - 60 + ts_s) * 1000, event_id=f"e{ts_s}")

    clock = [float(NOW)]
    w = Worker(app, heartbeats, open_log(settings), open_store(settings), settings,
               range(settings.partitions), lambda: clock[0], lambda: clock[0])  # fmt: skip
    w.start()

    def run(seconds: Sequence[int]) -> None:
        for pause in seconds:
            clock[0] += pause
            Clicks.drain(w)

    post(beat(0), beat(5), beat(10))
    run([0, 31])
    assert w.store.query("SELECT start_s, end_s FROM video_segments") == [(0, 10)]
    post(beat(5))
    run([0, 31])
    (progress,) = all_progress(w.store)
    assert progress.resume_position_s == 10 and progress.intervals == [[0, 10]]
    assert dead(w) == [(3, duplicate("e5"))]
    w.store.close()
    w.log.close()
