"""The session operator's state persisted key by key: what a commit writes, and what a
restore reads back (including a whole-state snapshot written by an earlier version)."""

from __future__ import annotations

import msgspec

from kappaflow.app import Batch
from kappaflow.apps.video import KEY_SEPARATOR, Heartbeat, create_app
from kappaflow.settings import Settings

A, B = f"a{KEY_SEPARATOR}v", f"b{KEY_SEPARATOR}v"


def opened(settings: Settings):
    processor = create_app(settings).processors["heartbeats"]
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


def test_restore_from_keys_and_from_an_earlier_whole_snapshot(settings: Settings) -> None:
    processor, state = opened(settings)
    keys = processor.changed_keys(state)
    assert processor.decode(b"", keys).keys == state.keys
    snapshot = msgspec.msgpack.encode(state.keys)  # how earlier versions persisted it
    restored = processor.decode(snapshot, {})
    assert restored.keys == state.keys
    assert processor.changed_keys(restored) == keys  # rewritten key by key next commit
