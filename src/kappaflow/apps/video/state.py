"""The video operator's records, and a key's state as bytes.

Each record is one numpy structured dtype, which is both what the store keeps and what
the operator holds in memory (the records, or columns named after their fields), always
addressed by field name, never by position:

- `SESSION`: a key's open session: its start, its last event and its open segment (the
  operator holds its fields as columns, among a key's `arena.KEY` fields);
- `SEGMENT`: a segment the open session has closed (held as these records, key by key);
- `EVENT`: an event its key's watermark has not passed (held as columns of the arena).

A key's bytes are a `HEAD` (the format, how many segments follow, the open session), its
`SEGMENT`s, then its `EVENT`s: fixed-size records, little-endian, unpadded. The keys a
commit changed are packed, and the keys of a partition unpacked, with array operations:
no Python object per event or segment (docs/decisions/019-keys-packed.md,
027-keys-packed-by-slicing.md).

The format has no versions. `FORMAT`, a key's first four bytes, is a checksum of the three
records' layout (their field names, types and order), so a changed record changes it. A
key of any other format (written before a record changed) is refused with
`StateFormatError`, never misread: the store is then built again from the log.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from kappaflow.errors import StateFormatError

SESSION = np.dtype([
    ("open", "?"),             # whether the key has an open session
    ("session_ms", "<i8"),     # its start: the time of its first event
    ("last_ms", "<i8"),        # the time of its last event,
    ("last_position", "<f8"),  # and its position
    ("segment_open", "?"),     # whether it has an open segment (its last event was no
                               # pause or stop):
    ("low", "<f8"),            # the lowest position it covered,
    ("high", "<f8"),           # the highest,
    ("start_ms", "<i8"),       # and the time of its first event
])  # fmt: skip
"""A key's open session."""
SEGMENT = np.dtype([("low", "<f8"), ("high", "<f8"), ("start_ms", "<i8"), ("end_ms", "<i8")])
"""A closed segment: the positions it covered, the times of its first and last event."""
EVENT = np.dtype([("ts", "<i8"), ("rank", "i1"), ("position", "<f8")])
"""A pending event: its time, its kind's rank (`events.KIND_RANK`) and its position."""
HEAD = np.dtype([("format", "<u4"), ("segments", "<u4"), ("session", SESSION)])
"""What a key's bytes start with: `FORMAT`, how many `SEGMENT`s follow, its open session."""


def layout_format(*records: np.dtype) -> int:
    """The format of state made of ``records``: a checksum of their field names, types and
    order."""
    return zlib.crc32(repr([record.descr for record in records]).encode())


FORMAT = layout_format(HEAD, SEGMENT, EVENT)


def packed(
    sessions: Mapping[str, np.ndarray] | np.ndarray,
    segments: np.ndarray,
    segment_counts: np.ndarray,
    events: np.ndarray,
    event_counts: np.ndarray,
) -> list[bytes]:
    """Each key's bytes: its open session (``sessions``: `SESSION` records, or their
    fields as columns), its ``segment_counts`` records of ``segments`` and its
    ``event_counts`` records of ``events`` (both in key order). Each key's parts are
    sliced from the bytes of all of them, and joined."""
    head = np.zeros(len(segment_counts), HEAD)
    head["format"], head["segments"], session = FORMAT, segment_counts, head["session"]
    for name in SESSION.names:
        session[name] = sessions[name]
    heads, segment_bytes, event_bytes = head.tobytes(), segments.tobytes(), events.tobytes()
    segment_ends = (np.cumsum(segment_counts, dtype=np.int64) * SEGMENT.itemsize).tolist()
    event_ends = (np.cumsum(event_counts, dtype=np.int64) * EVENT.itemsize).tolist()
    return [
        heads[start : start + HEAD.itemsize] + segment_bytes[s0:s1] + event_bytes[e0:e1]
        for start, s0, s1, e0, e1 in zip(
            range(0, len(heads), HEAD.itemsize), [0, *segment_ends], segment_ends,
            [0, *event_ends], event_ends, strict=False,
        )
    ]  # fmt: skip


class Unpacked(NamedTuple):
    """The records of keys, each part in key order, and how many of each a key has."""

    sessions: np.ndarray
    segments: np.ndarray
    segment_counts: np.ndarray
    events: np.ndarray
    event_counts: np.ndarray


def unpacked(keys: Sequence[str], values: Sequence[bytes]) -> Unpacked:
    """The records of ``keys`` from their bytes, ``values``, as `packed` wrote them.
    Raises `StateFormatError` naming the first key in another format."""
    data = np.frombuffer(b"".join(values), np.uint8)
    sizes = np.fromiter(map(len, values), np.int64, len(values))
    starts = np.cumsum(sizes) - sizes
    _refuse(keys, values, sizes < HEAD.itemsize)
    head = _records(data, starts, np.ones(len(values), np.int64), HEAD)
    segment_counts = head["segments"].astype(np.int64)
    events_at = HEAD.itemsize + segment_counts * SEGMENT.itemsize
    event_counts, left = np.divmod(sizes - events_at, EVENT.itemsize)
    _refuse(keys, values, (head["format"] != FORMAT) | (event_counts < 0) | (left != 0))
    return Unpacked(
        head["session"],
        _records(data, starts + HEAD.itemsize, segment_counts, SEGMENT),
        segment_counts,
        _records(data, starts + events_at, event_counts, EVENT),
        event_counts,
    )


def _refuse(keys: Sequence[str], values: Sequence[bytes], wrong: np.ndarray) -> None:
    """Raise `StateFormatError` for the first key ``wrong`` marks, if any."""
    if not wrong.any():
        return
    first = int(np.argmax(wrong))
    key, value = keys[first], values[first]
    found = (
        f"format {int.from_bytes(value[:4], 'little'):#010x}"
        if value[:4] != FORMAT.to_bytes(4, "little")
        else f"{len(value)} bytes, which no key's state of this format has"
    )
    raise StateFormatError(
        f"the video session state of key {key!r} is not in the format this version of "
        f"kappaflow reads (format {FORMAT:#010x}; found {found})"
    )


def _records(
    data: np.ndarray, firsts: np.ndarray, counts: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    """``counts[k]`` records of ``dtype`` from byte ``firsts[k]`` of ``data`` on, for each
    k, as one array."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    index = np.arange(total) - np.repeat(ends - counts, counts)  # a record's, in its key
    rows = np.repeat(firsts, counts) + index * dtype.itemsize
    return data[rows[:, None] + np.arange(dtype.itemsize)].view(dtype)[:, 0]
