"""A video key's packed state: each key's bytes are its head, its closed segments and its
pending events, record after record, and they unpack to the same records; state of any
other format is refused, naming the key and the rebuild, never misread."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.events import KEY_SEPARATOR
from kappaflow.apps.video.state import (
    EVENT,
    FORMAT,
    HEAD,
    SEGMENT,
    SESSION,
    layout_format,
    packed,
    unpacked,
)
from kappaflow.errors import StateFormatError
from kappaflow.settings import Settings


def test_each_keys_bytes_are_its_records_in_order_and_unpack_to_them() -> None:
    rng = np.random.default_rng(3)
    keys = 500
    sessions = np.zeros(keys, SESSION)
    sessions["last_ms"] = rng.integers(0, 1 << 42, keys)
    sessions["high"] = rng.random(keys) * 3600
    sessions["open"] = rng.random(keys) < 0.5
    segment_counts = rng.integers(0, 4, keys) * (rng.random(keys) < 0.3)  # mostly none
    event_counts = rng.integers(0, 9, keys)
    segments = np.zeros(int(segment_counts.sum()), SEGMENT)
    segments["low"] = rng.random(len(segments))
    segments["end_ms"] = rng.integers(0, 1 << 42, len(segments))
    events = np.zeros(int(event_counts.sum()), EVENT)
    events["ts"], events["rank"] = rng.integers(0, 1 << 42, len(events)), 3
    events["position"] = rng.random(len(events))

    values = packed(sessions, segments, segment_counts, events, event_counts)

    segment_ends, event_ends = np.cumsum(segment_counts), np.cumsum(event_counts)
    for k, value in enumerate(values):
        head = np.zeros(1, HEAD)
        head["format"], head["segments"], head["session"] = FORMAT, segment_counts[k], sessions[k]
        own_segments = segments[segment_ends[k] - segment_counts[k] : segment_ends[k]]
        own_events = events[event_ends[k] - event_counts[k] : event_ends[k]]
        assert value == head.tobytes() + own_segments.tobytes() + own_events.tobytes()
    found = unpacked([f"k{k}" for k in range(keys)], values)
    assert found.sessions.tobytes() == sessions.tobytes()
    assert found.segments.tobytes() == segments.tobytes()
    assert found.events.tobytes() == events.tobytes()
    assert found.segment_counts.tolist() == segment_counts.tolist()
    assert found.event_counts.tolist() == event_counts.tolist()


def test_no_keys_pack_to_nothing() -> None:
    none = np.zeros(0, np.int64)
    assert packed(np.zeros(0, SESSION), np.zeros(0, SEGMENT), none, np.zeros(0, EVENT), none) == []
    assert [len(part) for part in unpacked([], [])] == [0] * 5


def _with_session(session: np.dtype) -> np.dtype:
    return np.dtype([("format", "<u4"), ("segments", "<u4"), ("session", session)])


def test_the_format_changes_with_any_field_moved_renamed_or_retyped() -> None:
    fields = [(name, SESSION.fields[name][0]) for name in SESSION.names]
    changed = [
        fields[1:] + fields[:1],  # moved
        [("ended_ms" if name == "last_ms" else name, kind) for name, kind in fields],
        [(name, "<f8" if name == "last_ms" else kind) for name, kind in fields],
    ]
    formats = {layout_format(_with_session(np.dtype(other)), SEGMENT, EVENT) for other in changed}
    assert FORMAT not in formats and len(formats) == 3
    assert layout_format(_with_session(np.dtype(fields)), SEGMENT, EVENT) == FORMAT


def test_state_of_another_format_is_refused_naming_the_key_and_the_rebuild(
    settings: Settings,
) -> None:
    """A key written with the session's fields in another order (of the same size, so
    that it would be misread), by `SessionWindows` (msgpack), or cut short or too long for
    its records, fails the restore naming the key; so does a whole-partition state, which
    this operator never writes."""
    processor = create_app(settings).processors["heartbeats"]
    key = f"u{KEY_SEPARATOR}v"
    good = packed(np.ones(1, SESSION), np.zeros(1, SEGMENT), np.ones(1, np.int64),
                  np.zeros(2, EVENT), np.array([2]))[0]  # fmt: skip
    assert processor.decode(b"", {key: good}).keys == [key]
    reordered = np.dtype([(name, SESSION.fields[name][0]) for name in reversed(SESSION.names)])
    earlier = np.zeros(1, _with_session(reordered))
    earlier["format"] = layout_format(earlier.dtype, SEGMENT, EVENT)
    earlier["session"]["open"], earlier["session"]["last_ms"] = True, 5_000
    assert earlier.dtype.itemsize == HEAD.itemsize
    session_windows = msgspec.msgpack.encode([None, 0, [[1_000, 2, 0.0]]])
    for value in (earlier.tobytes(), session_windows, good[:-1], good + b"\0", good[:3], b""):
        with pytest.raises(StateFormatError) as refused:
            processor.decode(b"", {"other": good, key: value})
        assert f"state of key {key!r} is not in the format" in str(refused.value)
        assert "Move the store aside" in str(refused.value)
    with pytest.raises(StateFormatError, match=r"no state of a whole partition.*store aside"):
        processor.decode(b"\x80", {key: good})
