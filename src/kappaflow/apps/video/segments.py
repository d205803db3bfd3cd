"""Heartbeats -> watched segments per (user, video): the video app's session operator,
which works on each batch as columns (numpy arrays) rather than event by event.

A player sends a heartbeat about every 5 s with its position. Per (user, video), a
viewing session is a run of events with no more than the session gap of event time
between them. Inside a session, a segment grows while the position follows the
clock: it may deviate from real-time playback by at most the gap (so 2x playback,
small rewinds and paused heartbeats are all continuous); a larger jump, or a
``seek``, closes the segment and opens one at the new position; ``pause`` and
``stop`` close it. Segments of zero length carry no watched time and are dropped.

The operator keeps a code per key and, per code, its open session: its start, its
last event, its current segment, and the segments it has closed. Events wait
(``pending``) until the watermark passes them. A batch is sorted with the pending
events of the keys it touches, and equal events are refused as duplicates. The
events below the watermark are then folded into the open sessions: each key's open
session goes in as a first row, and a row joins the segment before it when it is in
the same session, the one before does not close it (pause, stop), it is no seek and
its position follows the clock; a row that neither joins nor closes starts a segment.
A session closes once the watermark passes its last event by the gap. The keys a batch
touched, or whose session closed, are folded on over their pending events into their
provisional sessions, which their progress rows show: a key's row is written again once
it moved by more than the progress accuracy, so it stays within that of the key's
latest heartbeat.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import compress, count, islice, repeat
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np

from kappaflow.app import Batch, Lookup, Output
from kappaflow.apps.video.catalog import Licence, Slots
from kappaflow.apps.video.events import (
    KIND_RANK,
    PAUSE,
    PROGRESS,
    SEEK,
    SEGMENTS,
    key_ids,
    keys_ids,
    session_keys,
)
from kappaflow.apps.video.reports import report_rows
from kappaflow.apps.video.state import DONE, HEAD, PENDING, SESSION, is_packed, packed, unpacked
from kappaflow.stream.lateness import late_reason, latest_before
from kappaflow.stream.sessions import KeyState, Rows, restored_keys

# A segment: [start_s, end_s, start_ms, end_ms], the positions covered and the event
# times of its first and last heartbeat.
Segment = list[Any]
_KIND, _POSITION = attrgetter("kind"), attrgetter("position_s")
_NO_CURRENT = PAUSE  # the rank of an open session's last event when no segment is open
_PAST_ALL = 1 << 62
"""A watermark past every event time."""


class Events(NamedTuple):
    """Events as columns: key codes, event times (ms), kind ranks, positions."""

    code: np.ndarray
    ts: np.ndarray
    rank: np.ndarray
    position: np.ndarray

    def take(self, selected: np.ndarray) -> Events:
        return Events(*(column[selected] for column in self))


def _events(code: Any, ts: Any, rank: Any, position: Any) -> Events:
    return Events(
        np.asarray(code, np.int64),
        np.asarray(ts, np.int64),
        np.asarray(rank, np.int8),
        np.asarray(position, np.float64),
    )


_NONE = ((), (), (), ())


def _joined(*parts: Events) -> Events:
    return Events(*map(np.concatenate, zip(*parts, strict=True)))


class Sessions(NamedTuple):
    """Per key code: its open session (``open``) with its start, its last event and
    its current segment (lowest and highest position, first event time); where its
    pending events are in the arena, how many, and the time of the first; whether the
    key changed since the state was last persisted; whether this process wrote its
    progress row, with the position, event time and number of segments it showed; the
    time of the latest event its view had; the latest event time the key has had (its
    own event clock); and when its latest event arrived (wall clock, ms)."""

    open: np.ndarray
    session_ms: np.ndarray
    last_ts: np.ndarray
    last_rank: np.ndarray
    last_position: np.ndarray
    low: np.ndarray
    high: np.ndarray
    start_ms: np.ndarray
    at: np.ndarray
    pending: np.ndarray
    first_ms: np.ndarray
    changed: np.ndarray
    shown: np.ndarray
    shown_position: np.ndarray
    shown_ms: np.ndarray
    shown_count: np.ndarray
    viewed_ms: np.ndarray
    clock_ms: np.ndarray
    arrived_ms: np.ndarray

    @classmethod
    def of_size(cls, size: int) -> Sessions:
        i8, f8 = np.int64, np.float64
        types = (bool, i8, i8, np.int8, f8, f8, f8, i8, i8, i8, i8, bool, bool, f8, i8, i8, i8,
                 i8, i8)  # fmt: skip
        return cls(*(np.zeros(size, t) for t in types))

    def take(self, selected: np.ndarray) -> Sessions:
        return Sessions(*(column[selected] for column in self))


class SegmentState:
    """One partition's sessions: a code per key (`keys`, `codes`), the `sessions` by
    code, the segments each open session has closed (`done`, by code), and the events
    the watermark has not passed, each key's in order in the `arena`. A batch costs what
    it touches: a key's events, when they change, are written anew at the arena's end,
    and the arena is rewritten without the rows left behind when it is full."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.codes: defaultdict[str, int] = defaultdict(count().__next__)
        """A key's code: a key looked up for the first time gets the next one."""
        self.sessions = Sessions.of_size(0)
        self.done: dict[int, bytes] = {}
        """The closed segments of open sessions as `DONE` records: a key changes with every
        heartbeat, and its state is written with all of them, by joining bytes."""
        self.arena = _events(*_NONE)
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
            size = len(self.sessions.open)
            if len(self.keys) > size:
                grown = Sessions.of_size(max(len(self.keys), 2 * size))
                for old, column in zip(self.sessions, grown, strict=True):
                    column[:size] = old
                self.sessions = grown
        return codes

    def union(self, *codes: np.ndarray) -> np.ndarray:
        """The distinct codes of all ``codes``, in order: a mark per known code costs a
        thirtieth of sorting them."""
        marks = np.zeros(len(self.keys), bool)
        for part in codes:
            marks[part] = True
        return np.flatnonzero(marks)

    def done_of(self, codes: list[int]) -> tuple[list[bytes], np.ndarray]:
        """The `done` records of ``codes`` and how many each has."""
        records = [*map(self.done.get, codes, repeat(b""))]
        return records, np.fromiter(map(len, records), np.int64, len(codes)) // DONE.itemsize

    def pop_done(self, code: int) -> list[Segment]:
        """The closed segments of ``code``'s open session, as it closes."""
        return np.frombuffer(self.done.pop(code, b""), DONE).tolist()

    def live(self, codes: np.ndarray) -> np.ndarray:
        """Whether each of ``codes`` has an open session or pending events."""
        return self.sessions.open[codes] | (self.sessions.pending[codes] > 0)

    def due(self, watermarks: np.ndarray) -> np.ndarray:
        """The codes with pending events below their watermark (``watermarks``, by code)."""
        s, known = self.sessions, len(self.keys)
        return np.flatnonzero((s.pending[:known] > 0) & (s.first_ms[:known] < watermarks[:known]))

    def pending_of(self, codes: np.ndarray) -> Events:
        """The pending events of ``codes`` (sorted), in code order."""
        counts = self.sessions.pending[codes]
        ends = np.cumsum(counts)
        firsts = np.repeat(self.sessions.at[codes] - ends + counts, counts)
        return self.arena.take(firsts + np.arange(len(firsts)))

    def set_pending(self, codes: np.ndarray, events: Events) -> None:
        """Make ``events`` (sorted by code, each key's in order) the pending events of
        ``codes`` (sorted): those of each code that has any."""
        s, written = self.sessions, len(events.ts)
        s.pending[codes] = 0
        if self.used + written > len(self.arena.ts):
            self._rewrite(2 * (int(s.pending.sum()) + written) + 1024)
        firsts = np.searchsorted(events.code, codes)
        counts = np.diff(firsts, append=written)
        s.at[codes], s.pending[codes] = self.used + firsts, counts
        having = counts > 0
        s.first_ms[codes[having]] = events.ts[firsts[having]]
        for column, values in zip(self.arena, events, strict=True):
            column[self.used : self.used + written] = values
        self.used += written

    def _rewrite(self, size: int) -> None:
        """The arena anew, of ``size`` rows, with the pending events only, in code order."""
        codes = np.flatnonzero(self.sessions.pending[: len(self.keys)])
        events = self.pending_of(codes)
        counts = self.sessions.pending[codes]
        self.arena = Events(*(np.zeros(size, column.dtype) for column in events))
        for column, values in zip(self.arena, events, strict=True):
            column[: len(values)] = values
        self.sessions.at[codes] = np.cumsum(counts) - counts
        self.used = len(events.ts)

    def compact(self) -> None:
        """Drop the codes of keys that are gone, when they outnumber the rest; codes
        must not be marked changed."""
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
        self.sessions = self.sessions.take(live)
        self.done = {int(renumbered[code]): done for code, done in self.done.items()}
        self.arena.code[: self.used] = renumbered[self.arena.code[: self.used]]


class Fold(NamedTuple):
    """Events folded onto the open sessions of their keys: the rows (each key's open
    session first), and the segments and sessions they make, in row order."""

    rows: Events
    last: np.ndarray
    """Whether a row is its key's last."""
    segment_session: np.ndarray
    segment_code: np.ndarray
    low: np.ndarray
    high: np.ndarray
    start_ms: np.ndarray
    end_ms: np.ndarray
    current: np.ndarray
    """Whether a segment is still open: it holds its key's last row, which does not
    close it."""
    session_code: np.ndarray
    session_ms: np.ndarray
    session_end: np.ndarray
    """A session's last row."""
    carried: np.ndarray
    """Whether a session is the open session its key had."""

    @property
    def extents(self) -> tuple[np.ndarray, ...]:
        """The segments' columns, in the order of a `Segment` and of `DONE`."""
        return self.low, self.high, self.start_ms, self.end_ms

    def segments(self, selected: np.ndarray) -> list[tuple[int, int, Segment]]:
        """(session, code, segment) of the ``selected`` segments."""
        segments = map(list, zip(*(column[selected].tolist() for column in self.extents),
                                 strict=True))  # fmt: skip
        return list(zip(self.segment_session[selected].tolist(),
                        self.segment_code[selected].tolist(), segments, strict=True))  # fmt: skip

    def records(self, selected: np.ndarray) -> bytes:
        """The ``selected`` segments as `DONE` records."""
        records = np.zeros(len(selected), DONE)
        for name, column in zip(DONE.names, self.extents, strict=True):
            records[name] = column[selected]
        return records.tobytes()


def _distinct(codes: np.ndarray) -> np.ndarray:
    """The distinct values of sorted ``codes``."""
    return codes[np.append(True, codes[1:] != codes[:-1])] if len(codes) else codes


def _order(events: Events) -> np.ndarray:
    """The stable order of ``events`` by (code, time, rank, position). It sorts one
    number made of the first three, a twentieth of the time of sorting by four columns,
    unless that would overflow or events equal in the three are out of position order."""
    code, ts, rank, position = events
    if len(ts):
        first, span = ts.min(), int(ts.max() - ts.min()) + 1
        if (int(code.max()) + 1) * span * 8 < 1 << 62:  # ranks are below 8
            composite = (code * span + (ts - first)) * 8 + rank
            order = np.argsort(composite, kind="stable")
            sorted_composite, sorted_position = composite[order], position[order]
            tie = sorted_composite[1:] == sorted_composite[:-1]
            if not (sorted_position[1:][tie] < sorted_position[:-1][tie]).any():
                return order
    return np.lexsort((position, rank, ts, code))


def _merged(
    pending: Events, new: Events, offsets: np.ndarray
) -> tuple[Events, np.ndarray, list[tuple[int, str]]]:
    """``new`` (at ``offsets``) merged into ``pending``, refusing those equal to an
    event there or earlier in the batch: the events sorted by (code, time, rank,
    position), the codes of the keys with events taken, and the refused events'
    (offset, reason)."""
    merged = _joined(pending, new)
    offset = np.concatenate((np.full(len(pending.ts), -1), offsets))
    order = _order(merged)
    merged, offset = merged.take(order), offset[order]
    repeated = np.zeros(len(offset), bool)
    repeated[1:] = np.logical_and.reduce([column[1:] == column[:-1] for column in merged])
    taken = _distinct(merged.code[~repeated & (offset >= 0)])
    refused = [(at, "duplicate") for at in offset[repeated].tolist()]
    return merged.take(~repeated), taken, refused


class WatchedSegments:
    """The video app's `Processor`: heartbeats to watched segments and progress, and
    the royalty and impression rows of each closed session."""

    def __init__(
        self,
        gap_s: float,
        videos: Lookup[dict[str, Licence]],
        slots: Lookup[dict[str, Slots]],
        accuracy_s: float = 0.0,
        lateness_s: float = 30.0,
        idle_s: float = 30.0,
    ) -> None:
        self.gap_s, self.gap_ms = gap_s, round(gap_s * 1000)
        self.accuracy_s, self.accuracy_ms = accuracy_s, accuracy_s * 1000
        self.lateness_ms, self.idle_ms = round(lateness_s * 1000), round(idle_s * 1000)
        self.videos = videos
        self.slots = slots
        self._json = msgspec.json.Encoder()

    def initial_state(self) -> SegmentState:
        return SegmentState()

    judges_lateness = True
    """Each key's events are judged against its own: a client's clock costs no other
    key its events (see `process`)."""

    def process(self, state: SegmentState, batch: Batch) -> Output[SegmentState]:
        """Each key runs on its own event clock, its latest event time: an event more
        than the lateness before it is refused as late, and the key's watermark is its
        clock less the lateness. A key without an event for the idle time (on the
        batch's clock) has its pending events folded and its session closed."""
        events, now = batch.events, batch.clock_ms
        n = len(events)
        new = Events(
            state.code_all(session_keys(events)),
            np.array(batch.times_ms, np.int64),
            np.fromiter(map(KIND_RANK.__getitem__, map(_KIND, events)), np.int8, n),
            np.fromiter(map(_POSITION, events), np.float64, n),
        )
        offsets, s = np.array(batch.offsets, np.int64), state.sessions
        if len(state.unarrived):
            s.arrived_ms[state.unarrived], state.unarrived = now, state.unarrived[:0]
        before = latest_before(new.code, new.ts, s.clock_ms)
        late = new.ts < before - self.lateness_ms
        refused = [
            (offset, late_reason(ts, latest, self.lateness_ms))
            for offset, ts, latest in zip(offsets[late].tolist(), new.ts[late].tolist(),
                                          before[late].tolist(), strict=True)
        ]  # fmt: skip
        if refused:
            new, offsets = new.take(~late), offsets[~late]
        np.maximum.at(s.clock_ms, new.code, new.ts)
        s.arrived_ms[new.code] = now
        watermarks = self._watermarks(s, now)
        work = state.union(new.code, state.due(watermarks))  # the keys whose events move
        merged, taken, duplicates = _merged(state.pending_of(work), new, offsets)
        released = merged.ts < watermarks[merged.code]
        state.set_pending(work, merged.take(~released))
        rows: Rows = {}
        closed = self._fold_released(state, merged.take(released), watermarks, batch.partition,
                                     rows)  # fmt: skip
        changed, s = state.union(taken, closed), state.sessions
        s.changed[changed] = True
        s.shown[closed] = False  # its row shows the closed session
        # An event at or before the latest its key's view had may change any segment.
        s.shown[new.code[new.ts <= s.viewed_ms[new.code]]] = False
        self._view(state, changed[state.live(changed)], batch.partition, rows)
        return Output(state, rows, refused + duplicates)

    def _watermarks(self, s: Sessions, now_ms: int) -> np.ndarray:
        """Each key's watermark, by code: its clock less the lateness, or past every
        event when it has been idle."""
        watermarks = s.clock_ms - self.lateness_ms
        watermarks[now_ms - s.arrived_ms >= self.idle_ms] = _PAST_ALL
        return watermarks

    def _fold(self, state: SegmentState, carried: np.ndarray, events: Events) -> Fold:
        """Fold ``events`` (each key's together, in order) onto the open sessions of
        the ``carried`` codes."""
        s = state.sessions
        sessions = _events(carried, s.last_ts[carried], s.last_rank[carried],
                           s.last_position[carried])  # fmt: skip
        rows = _joined(sessions, events)
        order = np.argsort(rows.code, kind="stable")  # a key's open session first
        rows = rows.take(order)
        low, high, start_ms, session_ms = (
            np.concatenate((carried_values, row_values))[order]
            for carried_values, row_values in (
                (s.low[carried], events.position),
                (s.high[carried], events.position),
                (s.start_ms[carried], events.ts),
                (s.session_ms[carried], events.ts),
            )
        )
        is_carried = order < len(carried)
        code, ts, rank, position = rows
        first = np.ones(len(ts), bool)
        first[1:] = code[1:] != code[:-1]
        last = np.ones(len(ts), bool)
        last[:-1] = first[1:]
        elapsed = np.diff(ts, prepend=0)
        opens = first | (elapsed > self.gap_ms)
        drift = np.diff(position, prepend=0.0) - elapsed / 1000
        joins = (~opens & (np.roll(rank, 1) < PAUSE) & (rank != SEEK)
                 & (np.abs(drift) <= self.gap_s))  # fmt: skip
        kept = np.flatnonzero(joins | (rank < PAUSE))  # joined, or starting a segment
        starts = np.flatnonzero(~joins[kept])
        heads_at, tails_at = kept[starts], np.append(kept[starts[1:] - 1], kept[-1:])
        session_of = np.cumsum(opens) - 1
        session_starts = np.flatnonzero(opens)
        reduce = len(starts) > 0
        return Fold(
            rows,
            last,
            session_of[heads_at],
            code[heads_at],
            np.minimum.reduceat(low[kept], starts) if reduce else low[:0],
            np.maximum.reduceat(high[kept], starts) if reduce else high[:0],
            start_ms[heads_at],
            ts[tails_at],
            last[tails_at] & (rank[tails_at] < PAUSE),
            code[session_starts],
            session_ms[session_starts],
            np.append(session_starts[1:] - 1, len(ts) - 1)[: len(session_starts)],
            is_carried[session_starts],
        )

    def _fold_released(
        self,
        state: SegmentState,
        released: Events,
        watermarks: np.ndarray,
        partition: int,
        rows: Rows,
    ) -> np.ndarray:
        """Fold the events their keys' watermarks (``watermarks``, by code) have passed
        into the open sessions and close the sessions that ended. Returns the codes of
        the keys with a session closed."""
        s, done = state.sessions, state.done
        codes = _distinct(released.code)
        fold = self._fold(state, codes[s.open[codes]], released)
        code, ts, rank, position = fold.rows
        stays = fold.last[fold.session_end]  # its key's last session: it stays open
        ended, end = np.flatnonzero(~stays), fold.session_end
        has_length = fold.high > fold.low
        segments: dict[int, list[Segment]] = {}
        for session, _, segment in fold.segments(has_length & ~stays[fold.segment_session]):
            segments.setdefault(session, []).append(segment)
        closing = [
            (code, session_ms, [*(state.pop_done(code) if carried else ()), *segments.get(i, ())],
             position, ts)
            for i, code, session_ms, carried, position, ts in zip(
                ended.tolist(), fold.session_code[ended].tolist(),
                fold.session_ms[ended].tolist(), fold.carried[ended].tolist(),
                position[end[ended]].tolist(), ts[end[ended]].tolist(), strict=True)
        ]  # fmt: skip
        closed_on = np.flatnonzero(has_length & stays[fold.segment_session] & ~fold.current)
        records = fold.records(closed_on)
        for i, code in enumerate(fold.segment_code[closed_on].tolist()):
            done[code] = done.get(code, b"") + records[i * DONE.itemsize : (i + 1) * DONE.itemsize]
        staying, end = fold.session_code[stays], end[stays]
        s.open[staying] = True
        s.session_ms[staying] = fold.session_ms[stays]
        s.last_ts[staying], s.last_position[staying] = ts[end], position[end]
        s.last_rank[staying] = np.minimum(rank[end], _NO_CURRENT)
        current = np.flatnonzero(fold.current)
        going_on = fold.segment_code[current]
        s.low[going_on], s.high[going_on] = fold.low[current], fold.high[current]
        s.start_ms[going_on] = fold.start_ms[current]

        idle = np.flatnonzero(s.open & (s.last_ts + self.gap_ms < watermarks))
        s.open[idle] = False
        for code, session_ms, ts, rank, position, low, high, start_ms in zip(
            idle.tolist(), *(column[idle].tolist() for column in s[1:8]), strict=True
        ):
            segments_of = state.pop_done(code)
            if rank < PAUSE and high > low:
                segments_of.append([low, high, start_ms, ts])
            closing.append((code, session_ms, segments_of, position, ts))
        for code, session_ms, segments_of, position, ts in closing:
            self._closed(partition, state.keys[code], session_ms, segments_of, position, ts, rows)
        return np.array([code for code, *_ in closing], np.int64)

    def _closed(
        self, partition: int, key: str, session_ms: int, segments: list[Segment],
        position: float, ts: int, rows: Rows,
    ) -> None:  # fmt: skip
        """Add the rows of a session that has ended for good."""
        user_id, video_id = key_ids(key)
        rows.setdefault(SEGMENTS.name, []).extend(
            (user_id, video_id, session_ms, number, *segment)
            for number, segment in enumerate(segments)
        )
        progress = (partition, user_id, video_id, position, ts, "[]")
        rows.setdefault(PROGRESS.name, []).append(progress)
        report_rows(user_id, video_id, segments, self.videos.data, self.slots.data, rows)

    def _view(self, state: SegmentState, codes: np.ndarray, partition: int, rows: Rows) -> None:
        """Add the progress rows of the keys of ``codes`` that moved by more than the
        accuracy since their row was last written (see `_moved`): their provisional
        sessions, the open one folded on over their pending events."""
        if not len(codes):
            return
        fold = self._fold(state, codes[state.sessions.open[codes]], state.pending_of(codes))
        kept = fold.high > fold.low
        ends = fold.rows.take(fold.last)  # one a key, in code order, as the segments
        bounds = np.searchsorted(fold.segment_code[kept], ends.code, side="right")
        per_key = np.diff(bounds, prepend=0)
        records, done = state.done_of(ends.code.tolist())
        moved = self._moved(state.sessions, ends, per_key + done)
        shown = np.flatnonzero(kept)[np.repeat(moved, per_key)]  # the moved keys' segments
        pairs = [*zip(fold.low[shown].tolist(), fold.high[shown].tolist(), strict=True)]
        closed = np.frombuffer(b"".join(compress(records, moved)), DONE)  # theirs before
        closed_pairs = [*zip(closed["low"].tolist(), closed["high"].tolist(), strict=True)]
        ends, bounds = ends.take(moved), np.cumsum(per_key[moved]).tolist()
        closed_bounds = np.cumsum(done[moved]).tolist()
        encode = self._json.encode
        texts = [
            encode(closed_pairs[c0:c1] + pairs[start:end] if c1 > c0 else pairs[start:end]).decode()
            for c0, c1, start, end in zip([0, *closed_bounds], closed_bounds, [0, *bounds], bounds,
                                          strict=False)
        ]  # fmt: skip
        end_codes = ends.code.tolist()
        users, videos = keys_ids([*map(state.keys.__getitem__, end_codes)])
        columns = (users, videos, ends.position.tolist(), ends.ts.tolist(), texts)
        rows.setdefault(PROGRESS.name, []).extend(
            zip(repeat(partition, len(users)), *columns, strict=True)
        )

    def _moved(self, s: Sessions, ends: Events, counts: np.ndarray) -> np.ndarray:
        """Which keys' progress rows to write, given each key's last event (``ends``)
        and number of segments: those this process has not written, and those whose
        position or event time moved by more than the accuracy, or whose number of
        segments changed, since; it notes what the rows written show. A row left as it
        is stays within the accuracy of the key's progress: events after the latest its
        view had move its segments' ends no more than its position (an earlier one makes
        `process` write the key again)."""
        code = ends.code
        s.viewed_ms[code] = ends.ts
        moved = (
            ~s.shown[code]
            | (counts != s.shown_count[code])
            | (np.abs(ends.position - s.shown_position[code]) > self.accuracy_s)
            | (np.abs(ends.ts - s.shown_ms[code]) > self.accuracy_ms)
        )
        code = code[moved]
        s.shown[code], s.shown_count[code] = True, counts[moved]
        s.shown_position[code], s.shown_ms[code] = ends.position[moved], ends.ts[moved]
        return moved

    def encode(self, state: SegmentState) -> bytes:
        return b""  # all of it is keyed

    def changed_keys(self, state: SegmentState) -> dict[str, bytes | None]:
        """The changed keys' state, `packed` (module `video_state`); None for keys gone."""
        s = state.sessions
        codes = np.flatnonzero(s.changed)
        s.changed[codes] = False
        live = state.live(codes)
        changed: dict[str, bytes | None] = dict.fromkeys(
            map(state.keys.__getitem__, codes[~live].tolist())
        )
        state.gone += len(changed)
        codes = codes[live]
        head = np.zeros(len(codes), HEAD)
        for name, column in zip(SESSION, s[:8], strict=True):
            head[name] = column[codes]
        records, head["done"] = state.done_of(codes.tolist())
        pending = state.pending_of(codes)
        pending_rows = np.zeros(len(pending.ts), PENDING)
        for name, column in zip(PENDING.names, pending[1:], strict=True):
            pending_rows[name] = column
        done = np.frombuffer(b"".join(records), DONE)
        values = packed(head, done, pending_rows, s.pending[codes])
        changed.update(zip(map(state.keys.__getitem__, codes.tolist()), values, strict=True))
        state.compact()
        return changed

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> SegmentState:
        """The state from its keys, `packed` or as `SessionWindows` writes them; ``data``,
        if any, is a whole-state snapshot of an earlier version, whose keys are then all
        written with the next commit."""
        written = {key: value for key, value in keys.items() if is_packed(value)}
        restored, changed = restored_keys(
            data, {key: value for key, value in keys.items() if key not in written}
        )
        parts = (_unpacked_key_states(restored.values()), unpacked(list(written.values())))
        head, done, pending, counts = map(np.concatenate, zip(*parts, strict=True))
        state = SegmentState()
        codes = state.code_all([*restored, *written])
        s = state.sessions
        for name, column in zip(SESSION, s[:8], strict=True):
            column[codes] = head[name]
        records = done.astype(DONE).tobytes()
        bounds = [0, *(np.cumsum(head["done"]) * DONE.itemsize).tolist()]
        state.done = {
            code: records[start:end]
            for code, start, end in zip(codes.tolist(), bounds, bounds[1:], strict=False)
            if end > start
        }
        code = np.repeat(codes, counts)
        state.set_pending(codes, _events(code, *(pending[name] for name in PENDING.names)))
        clocks = np.where(head["open"], head["last_ts"], 0)
        having = counts > 0
        clocks[having] = np.maximum(clocks[having], pending["ts"][np.cumsum(counts)[having] - 1])
        s.clock_ms[codes], state.unarrived = clocks, codes
        s.changed[state.code_all(list(changed))] = True
        return state


def _unpacked_key_states(
    key_states: Iterable[KeyState],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As `unpacked` gives them, the state of keys as `SessionWindows` writes them: (its
    open session or None, its last event time, pending (time, rank, position) items)."""
    heads, done, pending, counts = [], [], [], []
    for key_state in key_states:
        head = (0, False, 0, 0, _NO_CURRENT, 0.0, 0.0, 0.0, 0, 0)
        if key_state.acc is not None:
            session_ms, done_of, current, last_ts, position = key_state.acc
            low, high, start_ms = current[:3] if current else (0.0, 0.0, 0)
            rank = KIND_RANK["heartbeat"] if current else _NO_CURRENT
            head = (0, True, session_ms, last_ts, rank, position, low, high, start_ms,
                    len(done_of))  # fmt: skip
            done += map(tuple, done_of)
        heads.append(head)
        pending += map(tuple, key_state.pending)
        counts.append(len(key_state.pending))
    return (np.array(heads, HEAD), np.array(done, DONE), np.array(pending, PENDING),
            np.array(counts, np.int64))  # fmt: skip
