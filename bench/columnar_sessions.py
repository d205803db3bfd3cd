"""A prototype of a columnar session operator, for the sessionize benchmark: the
sessionizer's rules applied to each batch of a partition's records with numpy, the
state kept in arrays between batches (each key's last event and current segment, and
the events the watermark has not passed yet). It reads the log and decodes the records
as a worker does, drops late events and duplicates, and folds the events the watermark
passes into sessions, and those it has not into a provisional view, as the worker's
operator does. It writes nothing to the store (no rows, state or offsets) and makes no
progress or report rows: it measures how fast the operator could run with its state in
columns, not a finished one.

Per batch, the new events and the pending ones of the same keys are sorted by (key,
time, kind rank, position) and adjacent equal rows dropped. Those below the watermark
are folded: each key's carried state goes in as a first row, an event joins the
segment before it when it is in the same session, the one before does not close it
(pause, stop), it is no seek and its position follows the clock within the gap; an
event that does not join and does not close starts a segment; a segment's positions
are the minimum and maximum of its rows (`numpy.minimum.reduceat`). A segment is closed
unless it holds its key's last row, that row leaves it open and the session can still
go on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import count
from operator import attrgetter
from typing import NamedTuple

import msgspec
import numpy as np
from common import Segments

from kappaflow.apps.video_segments import KEY_SEPARATOR, KIND_RANK, PAUSE, SEEK, Heartbeat
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.stream.worker import _late

_TS, _KIND, _POSITION = attrgetter("ts"), attrgetter("kind"), attrgetter("position_s")
_NO_EVENT = -(1 << 62)


class Rows(NamedTuple):
    """Events as columns: key codes, event times (ms), kind ranks, positions."""

    code: np.ndarray
    ts: np.ndarray
    rank: np.ndarray
    position: np.ndarray

    def take(self, selected: np.ndarray) -> Rows:
        return Rows(*(column[selected] for column in self))


def _no_rows() -> Rows:
    return Rows(*(np.empty(0, t) for t in (np.int64, np.int64, np.int8, np.float64)))


class PartitionSessions:
    """One partition's sessions: a code per key, and per code the state of its open
    session (``open``): its last event (time, rank, position) and current segment."""

    def __init__(self, gap_s: float, lateness_ms: int) -> None:
        self.gap_ms, self.gap_s, self.lateness_ms = round(gap_s * 1000), gap_s, lateness_ms
        self.codes: dict[str, int] = {}
        self.keys: list[str] = []
        self.pending = _no_rows()
        self.max_ms = _NO_EVENT
        self.open = np.zeros(0, bool)
        self.last = _no_rows()
        self.low, self.high = np.zeros(0), np.zeros(0)
        self.closed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        """Closed segments: key codes, lowest and highest positions."""
        self.view = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        """The last batch's provisional segments of the keys it touched, as ``closed``:
        what a worker makes its progress rows from."""

    def add(self, events: list[Heartbeat]) -> None:
        """Fold a batch of events in: late ones dropped (by the worker's rule), then as
        `advance`."""
        keys = [f"{e.user_id}{KEY_SEPARATOR}{e.video_id}" for e in events]
        new = [key for key in dict.fromkeys(keys) if key not in self.codes]
        if new:
            self.codes.update(zip(new, count(len(self.keys)), strict=False))
            self.keys += new
            self._grow()
        n, times = len(events), list(map(_TS, events))
        rows = Rows(
            np.fromiter(map(self.codes.__getitem__, keys), np.int64, n),
            np.array(times, np.int64),
            np.fromiter(map(KIND_RANK.__getitem__, map(_KIND, events)), np.int8, n),
            np.fromiter(map(_POSITION, events), np.float64, n),
        )
        on_time = np.ones(n, bool)
        on_time[[i for i, _ in _late(times, self.max_ms, _NO_EVENT, self.lateness_ms)]] = False
        rows = rows.take(on_time)
        if len(rows.ts):
            self.max_ms = max(self.max_ms, int(rows.ts.max()))
        self.advance(rows, self.max_ms - self.lateness_ms)

    def advance(self, rows: Rows, watermark: int) -> None:
        """Merge ``rows`` into the pending events, fold those below ``watermark`` into
        the sessions and the pending events of the keys ``rows`` touched into the
        provisional view. Only the touched keys' pending events are sorted again: the
        others stay as they are, each key's together and in order."""
        touched = np.zeros(len(self.keys), bool)
        touched[rows.code] = True
        of_touched = touched[self.pending.code]
        rows = Rows(*map(np.concatenate, zip(self.pending.take(of_touched), rows, strict=True)))
        rows = rows.take(np.lexsort((rows.position, rows.rank, rows.ts, rows.code)))
        repeated = np.zeros(len(rows.ts), bool)
        repeated[1:] = np.logical_and.reduce([column[1:] == column[:-1] for column in rows])
        rows = Rows(*map(np.concatenate, zip(self.pending.take(~of_touched),
                                             rows.take(~repeated), strict=True)))  # fmt: skip
        released = rows.ts < watermark
        self.pending = rows.take(~released)
        self._fold(rows.take(released), watermark, keep=True)
        self._fold(self.pending.take(touched[self.pending.code]), watermark, keep=False)

    def finish(self) -> None:
        """Close every session, as a watermark past all events would."""
        pending, self.pending = self.pending, _no_rows()
        self._fold(pending, -_NO_EVENT, keep=True)

    def segments(self) -> Segments:
        found: Segments = Counter()
        for codes, lows, highs in self.closed:
            for code, low, high in zip(codes.tolist(), lows.tolist(), highs.tolist(), strict=True):
                user_id, video_id = self.keys[code].split(KEY_SEPARATOR)
                found[user_id, video_id, low, high] += 1
        return found

    def _grow(self) -> None:
        size = len(self.open)
        if len(self.keys) > size:
            size = max(len(self.keys), 2 * size)
            self.open, self.low, self.high = (
                _grown(a, size) for a in (self.open, self.low, self.high)
            )
            self.last = Rows(*(_grown(column, size) for column in self.last))

    def _fold(self, rows: Rows, watermark: int, keep: bool) -> None:
        """Fold ``rows`` (sorted) onto the open sessions of their keys; with ``keep``,
        the closed segments are kept and the open state moves on, else the segments
        are the provisional view."""
        carried = np.unique(rows.code)
        carried = carried[self.open[carried]]
        low = np.concatenate((self.low[carried], rows.position))
        high = np.concatenate((self.high[carried], rows.position))
        rows = Rows(*map(np.concatenate, zip(self.last.take(carried), rows, strict=True)))
        order = np.argsort(rows.code, kind="stable")  # a key's carried row first
        rows, low, high = rows.take(order), low[order], high[order]
        code, ts, rank, position = rows
        first = np.ones(len(ts), bool)
        first[1:] = code[1:] != code[:-1]
        last = np.ones(len(ts), bool)
        last[:-1] = first[1:]
        elapsed = np.diff(ts, prepend=0)
        drift = np.diff(position, prepend=0.0) - elapsed / 1000
        before = np.roll(rank, 1)
        joins = (~first & (elapsed <= self.gap_ms) & (before < PAUSE) & (rank != SEEK)
                 & (np.abs(drift) <= self.gap_s))  # fmt: skip
        starts = ~joins & (rank < PAUSE)
        kept = np.flatnonzero(joins | starts)
        heads = np.flatnonzero(starts[kept])
        segment_code = code[kept][heads]
        lows = np.minimum.reduceat(low[kept], heads) if len(heads) else low[:0]
        highs = np.maximum.reduceat(high[kept], heads) if len(heads) else high[:0]
        tails = np.append(kept[heads[1:] - 1], kept[-1:])[: len(heads)]
        going_on = ts + self.gap_ms >= watermark
        still_open = last[tails] & (rank[tails] < PAUSE) & going_on[tails]
        if not keep:
            self.view = (segment_code, lows, highs)
            return
        done = ~still_open & (highs > lows)
        self.closed.append((segment_code[done], lows[done], highs[done]))
        ends = np.flatnonzero(last)
        for source, target in zip(rows, self.last, strict=True):
            target[code[ends]] = source[ends]
        self.open[code[ends]] = going_on[ends]
        self.low[segment_code[still_open]] = lows[still_open]
        self.high[segment_code[still_open]] = highs[still_open]
        self._close_idle(watermark)

    def _close_idle(self, watermark: int) -> None:
        """Close the open sessions of keys the watermark has passed by the gap."""
        idle = np.flatnonzero(self.open & (self.last.ts + self.gap_ms < watermark))
        current = idle[(self.last.rank[idle] < PAUSE) & (self.high[idle] > self.low[idle])]
        self.closed.append((current, self.low[current], self.high[current]))
        self.open[idle] = False


def _grown(column: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros(size, column.dtype)
    grown[: len(column)] = column
    return grown


def consume_columnar(settings: Settings, partitions: Sequence[int] | None = None) -> Segments:
    """Run the prototype over ``partitions`` (default: all) of the video app's stream
    until they are consumed; return their segments, open sessions closed."""
    log = open_log(settings)
    decode = msgspec.json.Decoder(list[Heartbeat]).decode
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    owned = range(settings.partitions) if partitions is None else partitions
    runs = {p: PartitionSessions(settings.session_gap_s, lateness_ms) for p in owned}
    ends = log.end_offsets("heartbeats")
    offsets = dict.fromkeys(owned, 0)
    while any(offsets[p] < ends[p] for p in owned):
        for partition, sessions in runs.items():
            batch = log.read("heartbeats", partition, offsets[partition],
                             settings.batch_max_events)  # fmt: skip
            if batch.values:
                sessions.add(decode(b"[" + b",".join(batch.values) + b"]"))
                offsets[partition] = batch.next_offset
    log.close()
    found: Segments = Counter()
    for sessions in runs.values():
        sessions.finish()
        found += sessions.segments()
    return found
