"""A video key's state as bytes, many keys at a time: a fixed head (its open session),
then the segments that session has closed, then its pending events, each a record of
fixed size, little-endian. A batch of keys is packed by slicing the bytes of all its
heads, segments and events, and unpacked with array operations: no Python object per
event or segment.

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
    order). Each key's three parts are sliced from the parts' bytes and joined: a byte
    index built to scatter them into one array took 1.7 times as long."""
    head["format"] = FORMAT
    heads, done_bytes, pending_bytes = head.tobytes(), done.tobytes(), pending.tobytes()
    done_ends = (np.cumsum(head["done"], dtype=np.int64) * DONE.itemsize).tolist()
    pending_ends = (np.cumsum(counts, dtype=np.int64) * PENDING.itemsize).tolist()
    return [
        heads[start : start + HEAD.itemsize] + done_bytes[d0:d1] + pending_bytes[p0:p1]
        for start, d0, d1, p0, p1 in zip(
            range(0, len(heads), HEAD.itemsize), [0, *done_ends], done_ends,
            [0, *pending_ends], pending_ends, strict=False,
        )
    ]  # fmt: skip


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
