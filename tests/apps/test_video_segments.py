"""The video app's columnar session operator: every table it writes equals what the
library's `SessionWindows` writes with the same rules as a fold (`segment_fold`),
whatever the batches, lateness and restarts; its state is packed key by key, and read
back to go on alike."""

from __future__ import annotations

import heapq

import msgspec
import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from segment_fold import with_session_windows

from kappaflow.app import App, Batch
from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.arena import NO_EVENTS as _NONE
from kappaflow.apps.video.arena import events as _events
from kappaflow.apps.video.arena import order as _order
from kappaflow.apps.video.catalog import catalog_rows
from kappaflow.apps.video.events import KEY_SEPARATOR, Heartbeat
from kappaflow.apps.video.sim import simulate, simulated_catalog
from kappaflow.settings import Settings
from kappaflow.store.base import Store
from kappaflow.testing import run_events

GAP_S = 10.0
NOW = 1_000
"""The wall clock of the batches (ms)."""
IDLE_MS = round(Settings().idle_timeout_s * 1000)
"""A key without events this long closes (wall clock)."""


def everything(app: App, store: Store) -> dict[str, list[tuple]]:
    """Every row of the app's tables, and its dead letters' offsets and reasons."""
    found = {
        table.name: store.query(f"SELECT * FROM {table.name} ORDER BY {', '.join(table.key)}")
        for table in app.tables
    }
    found["dead letters"] = sorted(
        (offset, reason) for _, offset, reason, _ in store.dead_letters("video.heartbeats")
    )
    return found


@hypothesis_settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 10_000),
    viewers=st.integers(1, 12),
    jitter_ms=st.sampled_from([0, 3_000, 12_000]),
    lateness_s=st.sampled_from([0, 5, 30]),
    batch=st.sampled_from([1, 7, 50, 500]),
    restarts=st.integers(0, 2),
    close=st.booleans(),
)
def test_every_table_equals_what_session_windows_writes(
    settings: Settings, seed, viewers, jitter_ms, lateness_s, batch, restarts, close
) -> None:
    workload = simulate(800, viewers=viewers, seed=seed, jitter_ms=jitter_ms, duplicates=0.03)
    start = workload.events[0].ts
    tricky = [
        Heartbeat(f"u{KEY_SEPARATOR}", "v", t / 1000, start + t) for t in range(0, 30_000, 5_000)
    ]
    events = [*heapq.merge(workload.events, tricky, key=lambda event: event.ts)]
    catalog, found = catalog_rows(simulated_catalog(seed)), []
    for side, fold in (("columns", False), ("fold", True)):
        data_dir = f"{settings.data_dir}-{seed}-{viewers}-{jitter_ms}-{lateness_s}-{batch}-{side}"
        run = settings.replace(data_dir=data_dir, partitions=2, batch_max_events=batch,
                               allowed_lateness_s=lateness_s, video_session_gap_s=GAP_S,
                               # as `SessionWindows` writes
                               video_progress_accuracy_s=0)  # fmt: skip
        app = with_session_windows(create_app(run), run) if fold else create_app(run)
        store = run_events(app, events, run, restarts=restarts, seed=seed,
                           reference=catalog, close=close)  # fmt: skip
        found.append(everything(app, store))
        store.close()
    assert found[0] == found[1]
    assert found[0]["video_segments"]
    assert any(user == f"u{KEY_SEPARATOR}" for _, user, *_ in found[0]["video_progress"])


def open_two(settings: Settings):
    processor = create_app(settings).processors["heartbeats"]
    events = [Heartbeat("a", "v", 0.0, 1_000, "play"), Heartbeat("b", "v", 0.0, 1_000, "play"),
              Heartbeat("a", "v", 5.0, 6_000), Heartbeat("a", "v", 5.0, 6_000)]  # fmt: skip
    batch = Batch(0, [0, 1, 2, 3], events, [e.ts for e in events], 0, NOW)
    output = processor.process(processor.initial_state(), batch)
    assert output.dead_letters == [(3, "duplicate")]  # the later of two equal events
    return processor, output.state


def test_a_commit_writes_the_changed_keys_and_gone_keys_leave_the_state(
    settings: Settings,
) -> None:
    processor, state = open_two(settings)
    a, b = f"a{KEY_SEPARATOR}v", f"b{KEY_SEPARATOR}v"
    assert set(processor.changed_keys(state)) == {a, b}
    assert processor.changed_keys(state) == {}
    event = Heartbeat("b", "v", 10.0, 11_000)
    state = processor.process(state, Batch(0, [4], [event], [event.ts], 0, NOW)).state
    assert set(processor.changed_keys(state)) == {b}
    state = processor.process(state, Batch(0, [], [], [], 0, NOW + IDLE_MS)).state
    assert processor.changed_keys(state) == {a: None, b: None}
    many = [Heartbeat(f"u{n}", "v", 0.0, 200_000) for n in range(3_000)]
    batch = Batch(0, [*range(5, 3_005)], many, [e.ts for e in many], 0, NOW + IDLE_MS)
    state = processor.process(state, batch).state
    processor.changed_keys(state)
    assert len(state.keys) == 3_002
    state = processor.process(state, Batch(0, [], [], [], 0, NOW + 2 * IDLE_MS)).state
    assert len(processor.changed_keys(state)) == 3_000
    assert state.keys == [] and state.codes == {} and state.used == 0


def test_a_key_new_after_the_codes_are_compacted_gets_a_code_of_its_own(
    settings: Settings,
) -> None:
    """Compacting renumbers the keys that stay from 0; the next new key is numbered
    after them, and each key keeps its own pending events."""
    processor = create_app(settings).processors["heartbeats"]
    many = [Heartbeat(f"u{n}", "v", 0.0, 0) for n in range(3_000)]
    batch = Batch(0, [*range(3_000)], many, [0] * 3_000, 0, NOW)
    state = processor.process(processor.initial_state(), batch).state
    kept, new = Heartbeat("kept", "v", 1.0, 100_000), Heartbeat("new", "v", 2.0, 101_000)
    later = NOW + IDLE_MS  # the 3,000 keys have been idle long enough
    state = processor.process(state, Batch(0, [3_000], [kept], [kept.ts], 0, later)).state
    processor.changed_keys(state)  # the 3,000 sessions closed: their codes go
    state = processor.process(state, Batch(0, [3_001], [new], [new.ts], 0, later)).state
    keys = [f"kept{KEY_SEPARATOR}v", f"new{KEY_SEPARATOR}v"]
    assert state.keys == keys and state.codes == {keys[0]: 0, keys[1]: 1}
    assert [state.pending_of(np.array([code])).position.tolist() for code in (0, 1)] == [
        [1.0],
        [2.0],
    ]


def test_a_key_written_again_and_again_leaves_the_arena_small(settings: Settings) -> None:
    """Each batch writes the key's pending events anew at the arena's end; the arena is
    rewritten without the rows left behind before it outgrows twice what is pending."""
    processor = create_app(settings).processors["heartbeats"]
    state = processor.initial_state()
    for n in range(2_000):
        event = Heartbeat("a", "v", n * 5.0, n * 5_000)
        batch = Batch(0, [n], [event], [event.ts], 0, NOW)
        state = processor.process(state, batch).state
        assert state.used <= 2 * 8 + 1_024 and len(state.arena.ts) <= 2 * (8 + 1) + 1_024
    pending = state.pending_of(np.array([0]))
    assert pending.ts.tolist() == [n * 5_000 for n in range(1_993, 2_000)]


def test_packed_state_is_read_back_and_goes_on_as_session_windows_does(
    settings: Settings,
) -> None:
    """Keys the columnar operator packed (open sessions with a closed segment and a current
    one, pending events, a closed session with events pending) restore into it, which
    then writes what `SessionWindows`, restored from its own state, writes from there, and
    changes the same keys."""
    settings = settings.replace(allowed_lateness_s=5.0)  # a key's events 5 s before its latest
    columns = create_app(settings).processors["heartbeats"]
    windows = with_session_windows(create_app(settings), settings).processors["heartbeats"]
    events = [
        Heartbeat("a", "v", 0.0, 1_000), Heartbeat("a", "v", 5.0, 6_000),
        Heartbeat("a", "v", 60.0, 8_000, "seek"), Heartbeat("a", "v", 65.0, 13_000),
        Heartbeat("b", "v", 0.0, 1_000, "pause"), Heartbeat("a", "v", 70.0, 18_000),
        Heartbeat("c", "v", 0.0, 1_000), Heartbeat("c", "v", 9.0, 9_000, "seek"),
        Heartbeat("c", "v", 14.0, 14_000), Heartbeat("d", "v", 3.0, 2_000),
        Heartbeat("d", "v", 4.0, 29_000),
    ]  # fmt: skip
    batch = Batch(0, [*range(len(events))], events, [e.ts for e in events], 0, NOW)
    written = {}
    for side in (windows, columns):
        changed = side.changed_keys(side.process(side.initial_state(), batch).state)
        written[side] = {key: value for key, value in changed.items() if value}
    assert len(written[windows]) == len(written[columns]) == 4
    a, c, d = (f"{user}{KEY_SEPARATOR}v" for user in "acd")
    packed = {key: written[columns][key] for key in (a, c, d)}
    own = {key: written[windows][key] for key in packed}
    restored, restored_again = columns.decode(b"", packed), windows.decode(b"", own)
    assert columns.changed_keys(columns.decode(b"", packed)) == {}
    packed_again = columns.decode(b"", written[columns])
    packed_again.table["changed"][:] = True  # each key packs again to what was stored
    assert columns.changed_keys(packed_again) == {}
    assert columns.key_count(packed_again) == 4
    for now in (NOW, NOW + IDLE_MS - 1, NOW + IDLE_MS):  # restored keys: idle from NOW on
        expected = windows.process(restored_again, Batch(0, [], [], [], 0, now)).rows
        got = columns.process(restored, Batch(0, [], [], [], 0, now)).rows
        assert {table: sorted(rows) for table, rows in got.items()} == {
            table: sorted(rows) for table, rows in expected.items()
        }
        changed = columns.changed_keys(restored)
        assert changed.keys() == windows.changed_keys(restored_again).keys()
    assert changed == {a: None, c: None, d: None}


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.one_of(st.integers(0, 3), st.integers(0, 2**60)),
            st.integers(0, 4),
            st.sampled_from([0.0, 1.5, 2.0]),
        )
    )
)
def test_events_are_ordered_as_by_their_four_columns(rows) -> None:
    """One sort of a number made of code, time and rank gives the order of a stable sort
    by all four columns: with ties out of position order and spans that would overflow,
    the four columns are sorted instead."""
    events = _events(*zip(*rows, strict=True)) if rows else _events(*_NONE)
    expected = np.lexsort((events.position, events.rank, events.ts, events.code))
    assert _order(events).tolist() == expected.tolist()


def progress_rows(output) -> dict[tuple[str, str], tuple]:
    """A batch's progress rows by (user, video): (resume position, last event time,
    segments)."""
    return {
        (user, video): (position, ts, msgspec.json.decode(segments))
        for _, user, video, position, ts, segments in output.rows.get("video_progress", [])
    }


def test_a_progress_row_is_written_again_once_it_moved_more_than_the_accuracy(
    settings: Settings,
) -> None:
    """A heartbeat a second, each in a batch of its own. The row is written at the
    first, at the second (its segment now has a length), then once the position has
    moved more than 5 s (at normal speed, then at three times that); a seek is written
    at once, and so is the segment it starts once that has a length; paused, once the
    event time has moved more than 5 s; and the session's close. With an accuracy of 0
    every batch writes it."""
    events = [Heartbeat("u", "v", float(s), s * 1_000) for s in range(9)]
    events += [Heartbeat("u", "v", 100.0, 9_000, "seek")]
    events += [Heartbeat("u", "v", 101.0 + 3 * k, 10_000 + k * 1_000) for k in range(5)]
    events += [Heartbeat("u", "v", 116.0, 15_000, "pause")]
    events += [Heartbeat("u", "v", 116.0, s * 1_000) for s in range(16, 22)]
    for accuracy, written in ((5.0, [0, 1, 7, 9, 10, 12, 14, 20]), (0.0, [*range(22)])):
        processor = create_app(settings.replace(video_progress_accuracy_s=accuracy)).processors[
            "heartbeats"
        ]
        state, rows = processor.initial_state(), []
        for n, event in enumerate(events):
            output = processor.process(state, Batch(0, [n], [event], [event.ts], 0, NOW))
            state = output.state
            rows += [(n, row) for row in progress_rows(output).values()]
        assert [n for n, _ in rows] == written
        assert dict(rows)[7] == (7.0, 7_000, [[0.0, 7.0]])
        assert dict(rows)[12] == (107.0, 12_000, [[0.0, 8.0], [100.0, 107.0]])
        closed = processor.process(state, Batch(0, [], [], [], 0, NOW + IDLE_MS))
        assert progress_rows(closed) == {("u", "v"): (116.0, 21_000, [])}


def test_progress_rows_stay_within_the_accuracy_after_every_batch(settings: Settings) -> None:
    """Simulated viewers (pauses, seeks, out-of-order and duplicate heartbeats) in small
    batches, with the state restored from its persisted keys now and then: after every
    batch, each progress row written at an accuracy of 5 s is within 5 s of the row
    written on every change, with as many segments, and fewer rows are written."""
    workload = simulate(30_000, viewers=400, seed=7, jitter_ms=3_000, duplicates=0.01)
    sides = [
        create_app(settings.replace(video_progress_accuracy_s=accuracy)).processors["heartbeats"]
        for accuracy in (0.0, 5.0)
    ]
    states = [side.initial_state() for side in sides]
    tables: list[dict[tuple[str, str], tuple]] = [{}, {}]
    written, persisted = [0, 0], {}
    for n, start in enumerate(range(0, len(workload.events), 150)):
        events = workload.events[start : start + 150]
        batch = Batch(0, [*range(start, start + len(events))], events,
                      [event.ts for event in events], 0, NOW)  # fmt: skip
        for k, side in enumerate(sides):
            output = side.process(states[k], batch)
            states[k], rows = output.state, progress_rows(output)
            tables[k].update(rows)
            written[k] += len(rows)
        persisted.update(sides[1].changed_keys(states[1]))
        if n % 40 == 39:
            persisted = {key: state for key, state in persisted.items() if state is not None}
            states[1] = sides[1].decode(b"", persisted)
        exact, coarse = tables
        assert exact.keys() == coarse.keys()
        for key, (position, ts, segments) in exact.items():
            coarse_position, coarse_ts, coarse_segments = coarse[key]
            assert abs(coarse_position - position) <= 5 and abs(coarse_ts - ts) <= 5_000
            assert len(coarse_segments) == len(segments)
            for bounds, coarse_bounds in zip(segments, coarse_segments, strict=True):
                assert np.allclose(bounds, coarse_bounds, rtol=0, atol=5), (key, n)
    assert written[1] < 0.7 * written[0]


def test_an_event_before_the_latest_its_key_had_writes_the_row_again(settings: Settings) -> None:
    """An earlier heartbeat that arrives later changes a segment's start without moving
    the latest event: the row is written again, at any accuracy."""
    first = [Heartbeat("u", "v", 1.0, 1_000), Heartbeat("u", "v", 4.0, 4_000)]
    late = Heartbeat("u", "v", 0.0, 0)
    for accuracy in (0.0, 5.0):
        processor = create_app(settings.replace(video_progress_accuracy_s=accuracy)).processors[
            "heartbeats"
        ]
        state = processor.process(
            processor.initial_state(), Batch(0, [0, 1], first, [1_000, 4_000], 0)
        ).state
        output = processor.process(state, Batch(0, [2], [late], [0], 0))
        assert progress_rows(output) == {("u", "v"): (4.0, 4_000, [[0.0, 4.0]])}
