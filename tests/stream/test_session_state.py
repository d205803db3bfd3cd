"""The session operator's state persisted key by key: what a commit writes, and what a
restore reads back (state in another format it refuses).
`SessionWindows` runs the video app's segment rules, as a fold, on the app's events."""

from __future__ import annotations

import re

import msgspec
import pytest
from segment_fold import with_session_windows

from kappaflow.app import Batch
from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.events import KEY_SEPARATOR, Heartbeat
from kappaflow.errors import StateFormatError
from kappaflow.settings import Settings

A, B = f"a{KEY_SEPARATOR}v", f"b{KEY_SEPARATOR}v"
NOW = 1_000
"""The wall clock of the batches (ms)."""
IDLE = NOW + round(Settings().idle_timeout_s * 1000)
"""A wall clock at which keys that had events at `NOW` have been idle long enough."""


def opened(settings: Settings):
    app = with_session_windows(create_app(settings), settings)
    processor = app.processors["heartbeats"]
    events = [Heartbeat("a", "v", 0.0, 1_000, "play"), Heartbeat("b", "v", 0.0, 1_000, "play"),
              Heartbeat("a", "v", 5.0, 6_000)]  # fmt: skip
    return processor, processor.process(processor.initial_state(), batch(events)).state


def test_a_commit_writes_the_changed_keys_and_deletes_closed_ones(settings: Settings) -> None:
    processor, state = opened(settings)
    changed = processor.changed_keys(state)
    assert set(changed) == {A, B} and all(changed.values())
    assert processor.changed_keys(state) == {}
    state = processor.process(state, batch([Heartbeat("b", "v", 10.0, 11_000)])).state
    assert set(processor.changed_keys(state)) == {B}
    state = processor.process(state, batch([], IDLE)).state
    assert processor.changed_keys(state) == {A: None, B: None}
    assert state.keys == {}


def test_each_key_runs_on_its_own_clock(settings: Settings) -> None:
    """A key's items are folded once its own latest event is the lateness past them,
    and an item the lateness before its key's latest is refused as late: a key whose
    clock runs years ahead makes no other key's items late, nor folds them. Restored,
    the stored keys fold the same items at their next visit, to the same rows."""
    processor, state = opened(settings)  # A: 1 s and 6 s, B: 1 s; lateness 30 s, gap 10 s
    far = Heartbeat("c", "v", 0.0, 10**12)
    output = processor.process(state, batch([far, Heartbeat("b", "v", 1.0, 2_000)]))
    assert output.dead_letters == []
    assert len(state.keys[B].pending) == 2 and state.keys[A].acc is None
    stored = processor.changed_keys(state)
    late = Heartbeat("c", "v", 0.0, 10**12 - 30_001)
    assert processor.process(state, batch([late])).dead_letters == [
        (0, f"late: event time {late.ts} is more than 30000 ms before {far.ts}, the latest "
            "of its key")
    ]  # fmt: skip
    assert processor.process(state, batch([Heartbeat("a", "v", 30.0, 31_500)])).rows
    assert state.keys[A].pending == [(6_000, 2, 5.0), (31_500, 2, 30.0)]  # 1 s folded
    assert set(processor.changed_keys(state)) == {A}
    restored = processor.decode(b"", stored)
    processor.process(restored, batch([]))  # the restored keys' idle clocks start
    step = [Heartbeat("a", "v", 30.0, 31_500), Heartbeat("a", "v", 45.0, 46_000)]
    expected = processor.process(state, batch(step[1:])).rows
    assert by_key(processor.process(restored, batch(step)).rows) == by_key(expected)
    assert persisted(restored.keys) == persisted(state.keys)
    assert processor.process(restored, batch([], IDLE)).rows["video_segments"]


def persisted(keys: dict) -> dict:
    """Each key's state without its provisional view (derived, never written)."""
    return {key: (s.acc, s.last_ms, s.pending) for key, s in keys.items()}


def test_restore_from_keys_and_refuse_state_of_another_format(settings: Settings) -> None:
    processor, state = opened(settings)
    assert state.keys[A].view is not None  # A has pending heartbeats
    keys = processor.changed_keys(state)
    assert msgspec.msgpack.decode(keys[A]) == [None, 0, [[1_000, 0, 0.0], [6_000, 2, 5.0]]]
    assert persisted(processor.decode(b"", keys).keys) == persisted(state.keys)
    snapshot = msgspec.msgpack.encode(persisted(state.keys))  # as earlier versions wrote it
    with pytest.raises(StateFormatError, match=r"no state of a whole partition.*store aside"):
        processor.decode(snapshot, {})
    with pytest.raises(StateFormatError, match=re.escape(f"state of key {A!r} is not")):
        processor.decode(b"", {**keys, A: b"\x01\x02"})


def test_restored_keys_close_after_the_idle_time_from_the_first_batch(
    settings: Settings,
) -> None:
    processor, state = opened(settings)
    restored = processor.decode(b"", processor.changed_keys(state))
    later = IDLE + 60_000  # restored: when their events arrived is not known
    assert processor.process(restored, batch([], later)).rows == {}
    assert set(restored.keys) == {A, B}
    assert processor.process(restored, batch([], later + IDLE - NOW)).rows["video_segments"]
    assert restored.keys == {}


def test_the_provisional_view_follows_the_items_that_arrive(settings: Settings) -> None:
    """The view is stepped as heartbeats arrive, folded again after one out of order,
    and dropped once the key's idle time has released every pending item."""
    processor, state = opened(settings)
    rows = processor.process(state, batch([Heartbeat("a", "v", 10.0, 11_000)])).rows
    assert progress_segments(rows) == {"a": [[0.0, 10.0]]}
    rows = processor.process(state, batch([Heartbeat("a", "v", 2.0, 3_000, "pause")])).rows
    assert progress_segments(rows) == {"a": [[0.0, 2.0], [5.0, 10.0]]}
    later = [Heartbeat("a", "v", 60.0, 30_000), Heartbeat("a", "v", 65.0, 35_000)]
    rows = processor.process(state, batch(later)).rows
    assert progress_segments(rows) == {"a": [[0.0, 2.0], [5.0, 10.0], [60.0, 65.0]]}
    processor.process(state, batch([Heartbeat("a", "v", 75.0, 45_000)]))  # folds up to 15 s
    first, second = state.keys[A].view  # the first session released, the second pending
    assert first == state.keys[A].acc and first is not state.keys[A].acc
    assert second[0] == 30_000  # the session start
    assert processor.process(state, batch([], IDLE)).rows["video_segments"]
    assert A not in state.keys


def test_releasing_every_pending_item_adopts_the_view_to_the_same_result(
    settings: Settings,
) -> None:
    """Once a key's idle time passes, the sessions the view has folded are taken as
    they are; restored (no view), the key folds its items one by one, and both give
    the same rows and the same state."""
    processor, state = opened(settings)
    events = [
        Heartbeat("a", "v", 10.0, 11_000, "seek"),
        Heartbeat("a", "v", 15.0, 16_000),
        Heartbeat("a", "v", 40.0, 40_000, "play"),
        Heartbeat("a", "v", 45.0, 45_000),
    ]
    processor.process(state, batch(events))
    assert len(state.keys[A].view) == 2  # a gap of 24 s between 16 s and 40 s
    restored = processor.decode(b"", processor.changed_keys(state))
    assert restored.keys[A].view is None
    processor.process(restored, batch([]))  # the restored keys' idle clocks start
    expected = processor.process(state, batch([], IDLE)).rows
    assert by_key(processor.process(restored, batch([], IDLE)).rows) == by_key(expected)
    assert persisted(restored.keys) == persisted(state.keys) == {}
    segments = [row[4:6] for row in expected["video_segments"]]
    assert segments == [(0.0, 5.0), (10.0, 15.0), (40.0, 45.0)]


def test_a_batch_folds_the_items_it_releases_once(settings: Settings) -> None:
    """A key's batch releases the items its clock has passed by the lateness: those are
    folded once, into the released session, and the view is folded on from it over the
    rest. A later batch folds the items it releases and the view on over its new items
    only. Each batch gives the rows and state of the same key restored without its
    view."""
    processor, state = opened(settings)
    fold, folded = processor.fold, []
    fold.extend = lambda acc, items, extend=fold.extend: folded.extend(items) or extend(acc, items)
    restored = processor.decode(b"", processor.changed_keys(state))
    first = [Heartbeat("a", "v", s - 1.0, s * 1_000) for s in range(11, 61, 5)]
    second = [Heartbeat("a", "v", s - 1.0, s * 1_000) for s in range(61, 76, 5)]
    # released below 26 s: 1 s opens the session, 4 more extend it, then 7 viewed; then
    # 3 released below 41 s, and 3 viewed
    for events, count in (first, 4 + 7), (second, 3 + 3):
        folded.clear()
        expected = processor.process(state, batch(events)).rows
        assert len(folded) == count  # released, then folded into the view
        restored.keys[A].view = None
        assert processor.process(restored, batch(events)).rows == expected
        assert persisted(restored.keys) == persisted(state.keys)
    assert state.keys[A].acc[3] == 36_000  # released up to the last item before 41 s
    assert progress_segments(expected) == {"a": [[0.0, 70.0]]}


def batch(events: list[Heartbeat], now_ms: int = NOW) -> Batch:
    return Batch(0, list(range(len(events))), events, [e.ts for e in events], 0, now_ms)


def progress_segments(rows) -> dict[str, list]:
    return {row[1]: msgspec.json.decode(row[5]) for row in rows["video_progress"]}


def by_key(rows) -> dict[str, list]:
    """Each table's rows grouped by key, each key's rows in the order they came: the order
    between keys depends on when each was visited, which a restore may change."""
    return {table: sorted(found, key=lambda row: row[:2]) for table, found in rows.items()}
