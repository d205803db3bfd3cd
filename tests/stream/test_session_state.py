"""The session operator's state persisted key by key: what a commit writes, and what a
restore reads back (including a whole-state snapshot written by an earlier version).
`SessionWindows` runs the video app's segment rules, as a fold, on the app's events."""

from __future__ import annotations

import msgspec
from segment_fold import with_session_windows

from kappaflow.app import Batch
from kappaflow.apps.video import create_app
from kappaflow.apps.video_events import KEY_SEPARATOR, Heartbeat
from kappaflow.settings import Settings

A, B = f"a{KEY_SEPARATOR}v", f"b{KEY_SEPARATOR}v"


def opened(settings: Settings):
    app = with_session_windows(create_app(settings), settings.session_gap_s)
    processor = app.processors["heartbeats"]
    events = [Heartbeat("a", "v", 0.0, 1_000, "play"), Heartbeat("b", "v", 0.0, 1_000, "play"),
              Heartbeat("a", "v", 5.0, 6_000)]  # fmt: skip
    batch = Batch(0, [0, 1, 2], events, [e.ts for e in events], 2_000)
    return processor, processor.process(processor.initial_state(), batch).state


def test_a_commit_writes_the_changed_keys_and_deletes_closed_ones(settings: Settings) -> None:
    processor, state = opened(settings)
    changed = processor.changed_keys(state)
    assert set(changed) == {A, B} and all(changed.values())
    assert processor.changed_keys(state) == {}
    event = Heartbeat("b", "v", 10.0, 11_000)
    state = processor.process(state, Batch(0, [3], [event], [event.ts], 2_000)).state
    assert set(processor.changed_keys(state)) == {B}
    state = processor.process(state, Batch(0, [], [], [], 100_000)).state
    assert processor.changed_keys(state) == {A: None, B: None}
    assert state.keys == {}


def test_a_key_is_visited_when_its_session_could_close_and_a_visit_alone_is_not_written(
    settings: Settings,
) -> None:
    """A key's items wait until the watermark passes its first pending item plus the gap
    (the earliest its session could close); only then is the key visited and the items
    the watermark passed folded in. A visit that closes nothing is not written:
    restored, the stored key folds the same items at its next visit, to the same rows."""
    processor, state = opened(settings)  # A: 1 s and 6 s, B: 1 s; the gap is 10 s
    processor.process(state, batch([Heartbeat("b", "v", 10.0, 11_000)], 2_000))
    stored = processor.changed_keys(state)
    assert processor.process(state, batch([], 11_000)).rows == {}
    assert len(state.keys[B].pending) == 2  # due at 11 s + 1 ms: its first item + the gap
    assert processor.process(state, batch([], 12_000)).rows == {}  # visits A and B
    assert state.keys[B].pending == [] and state.keys[B].last_ms == 11_000
    assert processor.changed_keys(state) == {}
    restored = processor.decode(b"", stored)
    for step in ([Heartbeat("b", "v", 20.0, 21_000)], 12_000), ([], 100_000):
        expected = processor.process(state, batch(*step)).rows
        assert by_key(processor.process(restored, batch(*step)).rows) == by_key(expected)
    assert restored.keys == state.keys == {}
    assert [row[4:6] for row in by_key(expected)["video_segments"]] == [(0.0, 5.0), (0.0, 20.0)]


def persisted(keys: dict) -> dict:
    """Each key's state without its provisional view (derived, never written)."""
    return {key: (s.acc, s.last_ms, s.pending) for key, s in keys.items()}


def test_restore_from_keys_and_from_an_earlier_whole_snapshot(settings: Settings) -> None:
    processor, state = opened(settings)
    assert state.keys[A].view is not None  # A has pending heartbeats
    keys = processor.changed_keys(state)
    assert msgspec.msgpack.decode(keys[A]) == [None, 0, [[1_000, 0, 0.0], [6_000, 2, 5.0]]]
    assert persisted(processor.decode(b"", keys).keys) == persisted(state.keys)
    snapshot = msgspec.msgpack.encode(persisted(state.keys))  # how earlier versions wrote it
    restored = processor.decode(snapshot, {})
    assert persisted(restored.keys) == persisted(state.keys)
    assert processor.changed_keys(restored) == keys  # rewritten key by key next commit


def test_the_provisional_view_follows_the_items_that_arrive(settings: Settings) -> None:
    """The view is stepped as heartbeats arrive, folded again after one out of order,
    and dropped once the watermark has released every pending item."""
    processor, state = opened(settings)
    rows = processor.process(state, batch([Heartbeat("a", "v", 10.0, 11_000)], 2_000)).rows
    assert progress_segments(rows) == {"a": [[0.0, 10.0]]}
    rows = processor.process(state, batch([Heartbeat("a", "v", 2.0, 3_000, "pause")], 2_000)).rows
    assert progress_segments(rows) == {"a": [[0.0, 2.0], [5.0, 10.0]]}
    later = [Heartbeat("a", "v", 60.0, 30_000), Heartbeat("a", "v", 65.0, 35_000)]
    rows = processor.process(state, batch(later, 2_000)).rows
    assert progress_segments(rows) == {"a": [[0.0, 2.0], [5.0, 10.0], [60.0, 65.0]]}
    processor.process(state, batch([], 12_000))
    first, second = state.keys[A].view  # the first session released, the second pending
    assert first == state.keys[A].acc and first is not state.keys[A].acc
    assert second[0] == 30_000  # the session start
    assert processor.process(state, batch([], 40_000)).rows["video_segments"]
    assert state.keys[A].pending == [] and state.keys[A].view is None


def test_releasing_every_pending_item_adopts_the_view_to_the_same_result(
    settings: Settings,
) -> None:
    """Once the watermark passes all of a key's pending items, the sessions the view
    has folded are taken as they are; restored (no view), the key folds its items one
    by one, and both give the same rows and the same state."""
    processor, state = opened(settings)
    events = [
        Heartbeat("a", "v", 10.0, 11_000, "seek"),
        Heartbeat("a", "v", 15.0, 16_000),
        Heartbeat("a", "v", 40.0, 40_000, "play"),
        Heartbeat("a", "v", 45.0, 45_000),
    ]
    processor.process(state, batch(events, 2_000))
    assert len(state.keys[A].view) == 2  # a gap of 24 s between 16 s and 40 s
    restored = processor.decode(b"", processor.changed_keys(state))
    assert restored.keys[A].view is None
    for watermark in 50_000, 60_000:
        expected = processor.process(state, batch([], watermark)).rows
        assert by_key(processor.process(restored, batch([], watermark)).rows) == by_key(expected)
        assert persisted(restored.keys) == persisted(state.keys)
    assert [row[4:6] for row in expected["video_segments"]] == [(40.0, 45.0)]


def test_a_batch_folds_the_items_it_releases_once(settings: Settings) -> None:
    """A worker that is behind reads batches whose watermark passes most of their items:
    those are folded once, into the released session, and the view is folded on from it
    over the rest. A later batch, before the key is due again, folds the view on over
    its new items only. Each batch gives the rows and state of the same key restored
    without its view."""
    processor, state = opened(settings)
    fold, folded = processor.fold, []
    fold.extend = lambda acc, items, extend=fold.extend: folded.extend(items) or extend(acc, items)
    restored = processor.decode(b"", processor.changed_keys(state))
    first = [Heartbeat("a", "v", s - 1.0, s * 1_000) for s in range(11, 61, 5)]
    second = [Heartbeat("a", "v", s - 1.0, s * 1_000) for s in range(61, 76, 5)]
    for events, watermark, count in (first, 40_000, 7 + 4), (second, 42_000, 3):
        folded.clear()
        expected = processor.process(state, batch(events, watermark)).rows
        assert len(folded) == count  # released, then folded into the view
        restored.keys[A].view = None
        assert processor.process(restored, batch(events, watermark)).rows == expected
        assert persisted(restored.keys) == persisted(state.keys)
    assert state.keys[A].acc[3] == 36_000  # released up to the last item before 40 s
    assert progress_segments(expected) == {"a": [[0.0, 70.0]]}


def batch(events: list[Heartbeat], watermark_ms: int) -> Batch:
    return Batch(0, list(range(len(events))), events, [e.ts for e in events], watermark_ms)


def progress_segments(rows) -> dict[str, list]:
    return {row[1]: msgspec.json.decode(row[5]) for row in rows["video_progress"]}


def by_key(rows) -> dict[str, list]:
    """Each table's rows grouped by key, each key's rows in the order they came: the order
    between keys depends on when each was visited, which a restore may change."""
    return {table: sorted(found, key=lambda row: row[:2]) for table, found in rows.items()}
