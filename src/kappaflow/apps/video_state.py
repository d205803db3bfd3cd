"""A video key's state as bytes, many keys at a time: a fixed head (its open session),
then the segments that session has closed, then its pending events, each a record of
fixed size, little-endian. A batch of keys is packed and unpacked with array
operations, with no Python object per event or segment.

The first byte is `FORMAT`; state written by `SessionWindows` (a msgpack array, whose
first byte is 0x90-0x9f) is told apart by it.
"""

from __future__ import annotations

import numpy as np

FORMAT = 1
HEAD = np.dtype([
    ("format", "u1"), ("open", "?"), ("session_ms", "<i8"), ("last_ts", "<i8"),
    ("last_rank", "i1"), ("last_position", "<f8"), ("low", "<f8"), ("high", "<f8"),
    ("start_ms", "<i8"), ("done", "<u4"),
])  # fmt: skip
"""The open session (as the operator's `Sessions` columns), and how many segments it
has closed."""
SESSION = HEAD.names[1:9]
"""The head's fields that are the operator's `Sessions` columns, in their order."""
DONE = np.dtype([("low", "<f8"), ("high", "<f8"), ("start_ms", "<i8"), ("end_ms", "<i8")])
PENDING = np.dtype([("ts", "<i8"), ("rank", "i1"), ("position", "<f8")])


def _rows_at(firsts: np.ndarray, counts: np.ndarray, itemsize: int) -> np.ndarray:
    """The byte positions, one row per record, of ``counts[k]`` records of ``itemsize``
    bytes from byte ``firsts[k]`` on, for each k."""
    counts = counts.astype(np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    record = np.arange(total) - np.repeat(ends - counts, counts)  # its index in its key
    return (np.repeat(firsts, counts) + record * itemsize)[:, None] + np.arange(itemsize)


def _pending_at(starts: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Where the pending events of keys starting at ``starts`` start."""
    return starts + HEAD.itemsize + head["done"] * DONE.itemsize


def packed(
    head: np.ndarray, done: np.ndarray, pending: np.ndarray, counts: np.ndarray
) -> list[bytes]:
    """Each key's bytes: its ``head`` (whose format byte this sets), its
    ``head["done"]`` rows of ``done`` and its ``counts`` rows of ``pending`` (both in key
    order)."""
    head["format"] = FORMAT
    sizes = HEAD.itemsize + head["done"] * DONE.itemsize + counts * PENDING.itemsize
    starts = np.cumsum(sizes) - sizes
    out = np.zeros(int(sizes.sum()), np.uint8)
    for firsts, per_key, records in (
        (starts, np.ones(len(head), np.int64), head),
        (starts + HEAD.itemsize, head["done"], done),
        (_pending_at(starts, head), counts, pending),
    ):
        out[_rows_at(firsts, per_key, records.itemsize)] = records.view(np.uint8).reshape(
            len(records), records.itemsize
        )
    data = out.tobytes()
    bounds = np.append(starts, len(data)).tolist()
    return [data[bounds[k] : bounds[k + 1]] for k in range(len(head))]


def is_packed(value: bytes) -> bool:
    """Whether ``value`` is a key's state as `packed` writes it."""
    return value[:1] == bytes((FORMAT,))


def unpacked(values: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The heads, closed segments and pending events (both in key order) of keys
    ``packed`` wrote, and how many pending events each has."""
    data = np.frombuffer(b"".join(values), np.uint8)
    sizes = np.fromiter(map(len, values), np.int64, len(values))
    starts = np.cumsum(sizes) - sizes
    head = _records(data, starts, np.ones(len(values), np.int64), HEAD)
    pending_at = _pending_at(starts, head)
    counts = (starts + sizes - pending_at) // PENDING.itemsize
    done = _records(data, starts + HEAD.itemsize, head["done"], DONE)
    return head, done, _records(data, pending_at, counts, PENDING), counts


def _records(
    data: np.ndarray, firsts: np.ndarray, counts: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    """``counts[k]`` records of ``dtype`` from byte ``firsts[k]`` of ``data`` on."""
    return data[_rows_at(firsts, counts, dtype.itemsize)].view(dtype)[:, 0]
