"""The video operator's state for one partition, as arrays: a code per key, a `KEY`
record per code (as columns), the `SEGMENT` records each open session has closed, and
the pending events of every key as columns in one arena. A batch costs what it touches:
the keys of its events, and the keys whose pending events are due
(docs/decisions/018-session-operator-on-columns.md, 024-closed-segments-as-records.md)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import count, islice, repeat
from typing import NamedTuple

import numpy as np

from kappaflow.apps.video.state import EVENT, SEGMENT, SESSION
from kappaflow.stream.state import PackedState

KEY = np.dtype([
    *SESSION.descr,             # its open session, as persisted
    ("pending", "<i8"),         # how many events it has pending,
    ("at", "<i8"),              # where they start in the arena,
    ("first_ms", "<i8"),        # and the time of the first
    ("clock_ms", "<i8"),        # its latest event time: its own event clock
    ("arrived_ms", "<i8"),      # when its latest event arrived (the batches' clock)
    ("viewed_ms", "<i8"),       # the latest event time its provisional sessions had
    ("shown_position", "<f8"),  # what its progress row shows, as this process last wrote
    ("shown_ms", "<i8"),        # it: the position, the event time
    ("shown_count", "<i8"),     # and the number of segments
    ("shown", "?"),             # whether this process wrote its progress row
    ("changed", "?"),           # whether it changed since it was last persisted
])  # fmt: skip
"""What the operator holds of a key; only its `SESSION` fields are persisted."""


class Columns(dict[str, np.ndarray]):
    """Records of a structured dtype as columns: one array per field, by its name (numpy's
    loops over a field of records in one array, which is strided, cost more:
    docs/decisions/030-video-records-by-name.md)."""

    @classmethod
    def of(cls, dtype: np.dtype, size: int) -> Columns:
        return cls((name, np.zeros(size, dtype.fields[name][0])) for name in dtype.names)

    def take(self, index: np.ndarray) -> Columns:
        return Columns((name, column[index]) for name, column in self.items())

    def grown(self, size: int) -> Columns:
        """These columns, then rows of zeros up to ``size``."""
        grown = Columns((name, np.zeros(size, column.dtype)) for name, column in self.items())
        for name, column in self.items():
            grown[name][: len(column)] = column
        return grown

    def put(self, index: np.ndarray, records: np.ndarray) -> None:
        """Write ``records`` into the rows at ``index``, field by field."""
        for name in records.dtype.names:
            self[name][index] = records[name]


class Events(NamedTuple):
    """Events as columns: the codes of their keys, then the fields of `EVENT`."""

    code: np.ndarray
    ts: np.ndarray
    rank: np.ndarray
    position: np.ndarray

    def take(self, selected: np.ndarray) -> Events:
        return Events(*(column[selected] for column in self))

    def records(self) -> np.ndarray:
        """The events as `EVENT` records."""
        records = np.zeros(len(self.ts), EVENT)
        for name in EVENT.names:
            records[name] = getattr(self, name)
        return records


def events(code: Sequence, ts: Sequence, rank: Sequence, position: Sequence) -> Events:
    """Events of these columns, as the arena holds them."""
    return Events(
        np.asarray(code, np.int64),
        np.asarray(ts, np.int64),
        np.asarray(rank, np.int8),
        np.asarray(position, np.float64),
    )


NO_EVENTS = events((), (), (), ())


def joined(*parts: Events) -> Events:
    return Events(*map(np.concatenate, zip(*parts, strict=True)))


def distinct(codes: np.ndarray) -> np.ndarray:
    """The distinct values of sorted ``codes``."""
    return codes[np.append(True, codes[1:] != codes[:-1])] if len(codes) else codes


def order(events: Events) -> np.ndarray:
    """The stable order of ``events`` by (code, time, rank, position). It sorts one number
    made of the first three, unless that would overflow or events equal in the three are
    out of position order (docs/decisions/019-keys-packed.md)."""
    code, ts, rank, position = events
    if len(ts):
        first, span = ts.min(), int(ts.max() - ts.min()) + 1
        if (int(code.max()) + 1) * span * 8 < 1 << 62:  # ranks are below 8
            composite = (code * span + (ts - first)) * 8 + rank
            by_composite = np.argsort(composite, kind="stable")
            sorted_composite, sorted_position = composite[by_composite], position[by_composite]
            tie = sorted_composite[1:] == sorted_composite[:-1]
            if not (sorted_position[1:][tie] < sorted_position[:-1][tie]).any():
                return by_composite
    return np.lexsort((position, rank, ts, code))


def merged(
    pending: Events, new: Events, offsets: np.ndarray
) -> tuple[Events, np.ndarray, list[tuple[int, str]]]:
    """``new`` (at ``offsets``) merged into ``pending``, refusing those equal to an event
    there or earlier in the batch: the events sorted by (code, time, rank, position), the
    codes of the keys with events taken, and the refused events' (offset, reason)."""
    both = joined(pending, new)
    offset = np.concatenate((np.full(len(pending.ts), -1), offsets))
    sorted_order = order(both)
    both, offset = both.take(sorted_order), offset[sorted_order]
    repeated = np.zeros(len(offset), bool)
    repeated[1:] = np.logical_and.reduce([column[1:] == column[:-1] for column in both])
    taken = distinct(both.code[~repeated & (offset >= 0)])
    refused = [(at, "duplicate") for at in offset[repeated].tolist()]
    return both.take(~repeated), taken, refused


class SegmentState:
    """One partition's keys: their bytes as committed (``stored``), a code per key
    (``keys``, ``codes``), a `KEY` record per code (``table``, as columns), the closed
    segments of each open session (``done``, by code), and the pending events, each
    key's together and in order, in the ``arena``. A key's events, when they change, are
    written anew at the arena's end, and the arena is rewritten without the rows left
    behind when it is full."""

    def __init__(self, stored: PackedState | None = None) -> None:
        self.stored = PackedState() if stored is None else stored
        """Each key's bytes, as `state.packed` writes them: what a commit persists."""
        self.keys: list[str] = []
        self.codes: defaultdict[str, int] = defaultdict(count().__next__)
        """A key's code: a key looked up for the first time gets the next one."""
        self.table = Columns.of(KEY, 0)
        self.done: dict[int, bytes] = {}
        """The segments each open session has closed, as `SEGMENT` records: a key's state
        is written with all of them at every change, by joining bytes."""
        self.arena = NO_EVENTS
        self.used = 0
        """Rows of the arena written."""
        self.gone = 0
        """Codes whose keys have gone since the codes were last compacted, or more."""
        self.unarrived = np.zeros(0, np.int64)
        """Codes restored whose latest event's arrival is not known: taken as now."""

    def code_all(self, keys: list[str]) -> np.ndarray:
        """The codes of ``keys``, new keys given new codes."""
        known = len(self.keys)
        codes = np.fromiter(map(self.codes.__getitem__, keys), np.int64, len(keys))
        if len(self.codes) > known:
            self.keys += islice(self.codes, known, None)  # the new ones, in code order
            size = len(self.table["open"])
            if len(self.keys) > size:
                self.table = self.table.grown(max(len(self.keys), 2 * size))
        return codes

    def union(self, *codes: np.ndarray) -> np.ndarray:
        """The distinct codes of all ``codes``, in order, by a mark per known code rather
        than a sort (docs/decisions/024-closed-segments-as-records.md)."""
        marks = np.zeros(len(self.keys), bool)
        for part in codes:
            marks[part] = True
        return np.flatnonzero(marks)

    def done_of(self, codes: list[int]) -> tuple[list[bytes], np.ndarray]:
        """The closed segments of ``codes``' open sessions and how many each has."""
        records = [*map(self.done.get, codes, repeat(b""))]
        return records, np.fromiter(map(len, records), np.int64, len(codes)) // SEGMENT.itemsize

    def add_done(self, codes: list[int], records: np.ndarray) -> None:
        """Add the `SEGMENT` ``records``, in order, to the closed segments of ``codes``
        (a code a record)."""
        done, data, size = self.done, records.tobytes(), SEGMENT.itemsize
        for i, code in enumerate(codes):
            done[code] = done.get(code, b"") + data[i * size : (i + 1) * size]

    def pop_done(self, code: int) -> np.ndarray:
        """The closed segments of ``code``'s open session, as it closes."""
        return np.frombuffer(self.done.pop(code, b""), SEGMENT)

    def live(self, codes: np.ndarray) -> np.ndarray:
        """Whether each of ``codes`` has an open session or pending events."""
        return self.table["open"][codes] | (self.table["pending"][codes] > 0)

    def due(self, watermarks: np.ndarray) -> np.ndarray:
        """The codes with pending events below their watermark (``watermarks``, by code)."""
        known = len(self.keys)
        pending, first_ms = self.table["pending"][:known], self.table["first_ms"][:known]
        return np.flatnonzero((pending > 0) & (first_ms < watermarks[:known]))

    def pending_of(self, codes: np.ndarray) -> Events:
        """The pending events of ``codes`` (sorted), in code order."""
        counts = self.table["pending"][codes]
        ends = np.cumsum(counts)
        firsts = np.repeat(self.table["at"][codes] - ends + counts, counts)
        return self.arena.take(firsts + np.arange(len(firsts)))

    def set_pending(self, codes: np.ndarray, events: Events) -> None:
        """Make ``events`` (sorted by code, each key's in order) the pending events of
        ``codes`` (sorted): those of each code that has any."""
        table, written = self.table, len(events.ts)
        table["pending"][codes] = 0
        if self.used + written > len(self.arena.ts):
            self._rewrite(2 * (int(table["pending"].sum()) + written) + 1024)
        firsts = np.searchsorted(events.code, codes)
        counts = np.diff(firsts, append=written)
        table["at"][codes], table["pending"][codes] = self.used + firsts, counts
        having = counts > 0
        table["first_ms"][codes[having]] = events.ts[firsts[having]]
        for column, values in zip(self.arena, events, strict=True):
            column[self.used : self.used + written] = values
        self.used += written

    def _rewrite(self, size: int) -> None:
        """The arena anew, of ``size`` rows, with the pending events only, in code order."""
        codes = np.flatnonzero(self.table["pending"][: len(self.keys)])
        pending = self.pending_of(codes)
        counts = self.table["pending"][codes]
        self.arena = Events(*(np.zeros(size, column.dtype) for column in pending))
        for column, values in zip(self.arena, pending, strict=True):
            column[: len(values)] = values
        self.table["at"][codes] = np.cumsum(counts) - counts
        self.used = len(pending.ts)

    def compact(self) -> None:
        """Drop the codes of keys that are gone, when they outnumber the rest; codes must
        not be marked changed."""
        if 2 * (len(self.keys) - self.gone) + 1024 > len(self.keys):
            return
        live = np.flatnonzero(self.live(np.arange(len(self.keys))))
        self.gone = len(self.keys) - len(live)  # some came back
        if 2 * len(live) + 1024 > len(self.keys):
            return
        self.gone = 0
        self._rewrite(len(self.arena.ts))  # in code order, so still after renumbering
        renumbered = np.zeros(len(self.keys), np.int64)
        renumbered[live] = np.arange(len(live))
        self.keys = [self.keys[code] for code in live.tolist()]
        self.codes = defaultdict(count(len(self.keys)).__next__, zip(self.keys, count()))
        self.table = self.table.take(live)
        self.done = {int(renumbered[code]): done for code, done in self.done.items()}
        self.arena.code[: self.used] = renumbered[self.arena.code[: self.used]]
