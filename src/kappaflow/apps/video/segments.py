"""Heartbeats -> watched segments per (user, video): the video app's session operator,
which applies the session rules (`rules`) to each batch as columns.

Each key (a user and a video) runs on its own event clock, its latest event time: an
event more than the allowed lateness before it is refused as late, and the key's
watermark is its clock less the lateness; a key without an event for the idle time (on
the batches' clock) has a watermark past all its events. Events wait, pending, until
their key's watermark passes them, and one equal to an event pending or earlier in the
batch is refused as a duplicate. A batch then:

1. folds the events released onto their keys' open sessions: each key's latest session
   stays open, and its earlier ones have ended;
2. closes the open sessions whose key's watermark has passed their last event by the
   gap;
3. writes the rows of each session closed (its segments with a length, and its royalty
   and impression rows), and the progress rows of the keys it changed: their
   provisional sessions, the open one folded on over their pending events. A key's
   progress row is written again once it moved by more than the progress accuracy, so
   it stays within that of the key's latest heartbeat.

The state is a `SegmentState`: its keys as columns, over the partition's keyed state, a
`PackedState` of each key's bytes as `state` packs them, so that a commit writes the
keys whose bytes a batch changed.

Why not the library's `Session` windows: those fold a key's events in Python, event by
event, and keep each key as a msgpack value. This operator applies its rules to a whole
batch as numpy columns and packs each key as fixed-size records with array operations,
about twice as fast end to end (docs/decisions/019-keys-packed.md), which is what the
heartbeat workload needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from itertools import compress, repeat
from operator import attrgetter
from typing import NamedTuple

import msgspec
import numpy as np

from kappaflow.app import Batch, Lookup, Output
from kappaflow.apps.video.arena import Columns, Events, SegmentState, distinct, merged
from kappaflow.apps.video.catalog import Licence, Slots
from kappaflow.apps.video.events import (
    KIND_RANK,
    PROGRESS,
    SEGMENTS,
    key_ids,
    keys_ids,
    session_keys,
)
from kappaflow.apps.video.reports import Segment, report_rows
from kappaflow.apps.video.rules import (
    Fold,
    closes,
    fold,
    leaves_open,
    segment_tuples,
    stays_open,
    timeline_of,
)
from kappaflow.apps.video.state import EVENT, SEGMENT, SESSION, packed, unpacked
from kappaflow.stream.lateness import late_reason, latest_before
from kappaflow.stream.sessions import Rows, refuse_partition_state
from kappaflow.stream.state import PackedState

_KIND, _POSITION = attrgetter("kind"), attrgetter("position_s")
_PAST_ALL = 1 << 62
"""A watermark past every event time."""


class ClosedSession(NamedTuple):
    """A session that has ended for good: its key's code, its start, its segments with a
    length, and its last event's position and time."""

    code: int
    session_ms: int
    segments: list[Segment]
    position: float
    ts: int


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
    key its events."""

    def process(self, state: SegmentState, batch: Batch) -> Output[SegmentState]:
        new, offsets, late = self._arrived(state, batch)
        watermarks = self._watermarks(state.table, batch.clock_ms)
        released, taken, duplicates = self._pend(state, new, offsets, watermarks)
        closed = [*self._release(state, released), *self._close(state, watermarks)]
        rows: Rows = {}
        for session in closed:
            self._closed_rows(batch.partition, state.keys[session.code], session, rows)
        changed = self._changed(state, new, taken, closed)
        self._view(state, changed[state.live(changed)], batch.partition, rows)
        return Output(state, rows, late + duplicates)

    def _arrived(
        self, state: SegmentState, batch: Batch
    ) -> tuple[Events, np.ndarray, list[tuple[int, str]]]:
        """The batch's events on time, as columns, and their offsets; and the late ones'
        (offset, reason): those more than the lateness before the latest their key had,
        before the batch or earlier in it. Moves the keys' clocks on."""
        n, now = len(batch.events), batch.clock_ms
        new = Events(
            state.code_all(session_keys(batch.events)),
            np.array(batch.times_ms, np.int64),
            np.fromiter(map(KIND_RANK.__getitem__, map(_KIND, batch.events)), np.int8, n),
            np.fromiter(map(_POSITION, batch.events), np.float64, n),
        )
        offsets, table = np.array(batch.offsets, np.int64), state.table
        if len(state.unarrived):
            table["arrived_ms"][state.unarrived], state.unarrived = now, state.unarrived[:0]
        before = latest_before(new.code, new.ts, table["clock_ms"])
        late = new.ts < before - self.lateness_ms
        refused = [
            (offset, late_reason(ts, latest, self.lateness_ms))
            for offset, ts, latest in zip(offsets[late].tolist(), new.ts[late].tolist(),
                                          before[late].tolist(), strict=True)
        ]  # fmt: skip
        if refused:
            new, offsets = new.take(~late), offsets[~late]
        np.maximum.at(table["clock_ms"], new.code, new.ts)
        table["arrived_ms"][new.code] = now
        return new, offsets, refused

    def _watermarks(self, table: Columns, now_ms: int) -> np.ndarray:
        """Each key's watermark, by code: its clock less the lateness, or past every
        event when it has been idle."""
        watermarks = table["clock_ms"] - self.lateness_ms
        watermarks[now_ms - table["arrived_ms"] >= self.idle_ms] = _PAST_ALL
        return watermarks

    def _pend(
        self, state: SegmentState, new: Events, offsets: np.ndarray, watermarks: np.ndarray
    ) -> tuple[Events, np.ndarray, list[tuple[int, str]]]:
        """Merge ``new`` (at ``offsets``) into the pending events, refusing duplicates, and
        take out those their key's watermark (``watermarks``, by code) has passed, of its
        keys and of the keys with events due. Returns the events taken out (sorted), the
        codes of the keys with events taken, and the duplicates' (offset, reason)."""
        work = state.union(new.code, state.due(watermarks))  # the keys whose events move
        events, taken, duplicates = merged(state.pending_of(work), new, offsets)
        released = events.ts < watermarks[events.code]
        state.set_pending(work, events.take(~released))
        return events.take(released), taken, duplicates

    def _fold(self, state: SegmentState, codes: np.ndarray, events: Events) -> Fold:
        """The rules applied to ``events`` (each key's together, in order) after the open
        sessions of those of ``codes`` (sorted) that have one."""
        carried = codes[state.table["open"][codes]]
        return fold(timeline_of(state.table, carried, events), self.gap_ms, self.gap_s)

    def _release(self, state: SegmentState, released: Events) -> list[ClosedSession]:
        """Fold the ``released`` events (sorted) onto their keys' open sessions: each
        key's latest session stays open (`_carry_on`); the sessions before it ended."""
        folded = self._fold(state, distinct(released.code), released)
        latest = stays_open(folded)
        # An open session that ended takes its closed segments before its key's next
        # session adds its own.
        ended = self._ended(state, folded, ~latest)
        self._carry_on(state, folded, latest)
        return ended

    def _ended(self, state: SegmentState, folded: Fold, ended: np.ndarray) -> list[ClosedSession]:
        """The sessions of ``folded`` that ``ended`` marks, with their segments: those
        each closed before, if it was its key's open session, then its segments in the
        fold that have a length."""
        segments, sessions, rows = folded.segments, folded.sessions, folded.rows
        kept = np.flatnonzero(segments.watched() & ended[segments.session])
        of_session: defaultdict[int, list[Segment]] = defaultdict(list)
        for session, segment in zip(segments.session[kept].tolist(), segments.tuples(kept),
                                    strict=True):  # fmt: skip
            of_session[session].append(segment)
        which = np.flatnonzero(ended)
        end = sessions.end[which]
        return [
            ClosedSession(code, session_ms,
                          [*(segment_tuples(state.pop_done(code)) if carried else ()),
                           *of_session[i]],
                          position, ts)
            for i, code, session_ms, carried, position, ts in zip(
                which.tolist(), sessions.code[which].tolist(),
                sessions.session_ms[which].tolist(), sessions.carried[which].tolist(),
                rows.position[end].tolist(), rows.ts[end].tolist(), strict=True)
        ]  # fmt: skip

    def _carry_on(self, state: SegmentState, folded: Fold, latest: np.ndarray) -> None:
        """Keep the sessions ``latest`` marks open: the segments with a length each closed
        in the fold join its closed ones, and its last row and open segment go into its
        key's open session."""
        segments, sessions, rows = folded.segments, folded.sessions, folded.rows
        closed = np.flatnonzero(segments.watched() & latest[segments.session] & ~segments.open)
        state.add_done(segments.code[closed].tolist(), segments.records(closed))
        codes, end = sessions.code[latest], sessions.end[latest]
        table = state.table
        table["open"][codes] = True
        table["session_ms"][codes] = sessions.session_ms[latest]
        table["last_ms"][codes], table["last_position"][codes] = rows.ts[end], rows.position[end]
        table["segment_open"][codes] = leaves_open(rows.rank[end])
        still = np.flatnonzero(segments.open)
        codes = segments.code[still]
        table["low"][codes], table["high"][codes] = segments.low[still], segments.high[still]
        table["start_ms"][codes] = segments.start_ms[still]

    def _close(self, state: SegmentState, watermarks: np.ndarray) -> list[ClosedSession]:
        """Close the open sessions whose key's watermark (``watermarks``, by code) has
        passed their last event by the gap, each with the segments it closed, then its
        open segment if that has a length."""
        table = state.table
        idle = np.flatnonzero(closes(table, watermarks, self.gap_ms))
        table["open"][idle] = False
        closed = []
        names = ("session_ms", "last_ms", "last_position", "segment_open", "low", "high",
                 "start_ms")  # fmt: skip
        for code, session_ms, last_ms, position, segment_open, low, high, start_ms in zip(
            idle.tolist(), *(table[name][idle].tolist() for name in names), strict=True
        ):
            segments = segment_tuples(state.pop_done(code))
            if segment_open and high > low:
                segments.append((low, high, start_ms, last_ms))
            closed.append(ClosedSession(code, session_ms, segments, position, last_ms))
        return closed

    def _closed_rows(self, partition: int, key: str, closed: ClosedSession, rows: Rows) -> None:
        """Add the rows of a session that has ended for good."""
        user_id, video_id = key_ids(key)
        rows.setdefault(SEGMENTS.name, []).extend(
            (user_id, video_id, closed.session_ms, number, *segment)
            for number, segment in enumerate(closed.segments)
        )
        progress = (partition, user_id, video_id, closed.position, closed.ts, "[]")
        rows.setdefault(PROGRESS.name, []).append(progress)
        when = closed.session_ms  # the catalog in force when the session started
        report_rows(user_id, video_id, closed.segments, self.videos.at(when),
                    self.slots.at(when), rows)  # fmt: skip

    def _changed(
        self, state: SegmentState, new: Events, taken: np.ndarray, closed: list[ClosedSession]
    ) -> np.ndarray:
        """Marks changed the keys with events ``taken`` or a session ``closed``; returns
        their codes. Their progress rows are written again (`_view`) once they moved, and
        in any case after a session closed (the row shows it), or an event at or before
        the latest the key's view had (it may change any segment)."""
        table, closed_codes = state.table, np.array([s.code for s in closed], np.int64)
        changed = state.union(taken, closed_codes)
        table["changed"][changed] = True
        table["shown"][closed_codes] = False
        table["shown"][new.code[new.ts <= table["viewed_ms"][new.code]]] = False
        return changed

    def _view(self, state: SegmentState, codes: np.ndarray, partition: int, rows: Rows) -> None:
        """Add the progress rows of the keys of ``codes`` that moved by more than the
        accuracy since their row was last written (see `_moved`): their provisional
        sessions, the open one folded on over their pending events."""
        if not len(codes):
            return
        folded = self._fold(state, codes, state.pending_of(codes))
        segments = folded.segments
        kept = segments.watched()
        ends = folded.rows.take(folded.last)  # one a key, in code order, as the segments
        bounds = np.searchsorted(segments.code[kept], ends.code, side="right")
        per_key = np.diff(bounds, prepend=0)
        records, done = state.done_of(ends.code.tolist())
        moved = self._moved(state.table, ends, per_key + done)
        shown = np.flatnonzero(kept)[np.repeat(moved, per_key)]  # the moved keys' segments
        pairs = [*zip(segments.low[shown].tolist(), segments.high[shown].tolist(), strict=True)]
        closed = np.frombuffer(b"".join(compress(records, moved)), SEGMENT)  # theirs before
        closed_pairs = [*zip(closed["low"].tolist(), closed["high"].tolist(), strict=True)]
        ends, bounds = ends.take(moved), np.cumsum(per_key[moved]).tolist()
        closed_bounds = np.cumsum(done[moved]).tolist()
        encode = self._json.encode
        texts = [
            encode(closed_pairs[c0:c1] + pairs[start:end] if c1 > c0 else pairs[start:end]).decode()
            for c0, c1, start, end in zip([0, *closed_bounds], closed_bounds, [0, *bounds], bounds,
                                          strict=False)
        ]  # fmt: skip
        users, videos = keys_ids([*map(state.keys.__getitem__, ends.code.tolist())])
        columns = (users, videos, ends.position.tolist(), ends.ts.tolist(), texts)
        rows.setdefault(PROGRESS.name, []).extend(
            zip(repeat(partition, len(users)), *columns, strict=True)
        )

    def _moved(self, table: Columns, ends: Events, counts: np.ndarray) -> np.ndarray:
        """Which keys' progress rows to write, given each key's last event (``ends``)
        and number of segments: those this process has not written, and those whose
        position or event time moved by more than the accuracy, or whose number of
        segments changed, since; it notes what the rows written show. A row left as it
        is stays within the accuracy of the key's progress: events after the latest its
        view had move its segments' ends no more than its position (an earlier one makes
        `process` write the key again)."""
        code = ends.code
        table["viewed_ms"][code] = ends.ts
        moved = (
            ~table["shown"][code]
            | (counts != table["shown_count"][code])
            | (np.abs(ends.position - table["shown_position"][code]) > self.accuracy_s)
            | (np.abs(ends.ts - table["shown_ms"][code]) > self.accuracy_ms)
        )
        code = code[moved]
        table["shown"][code], table["shown_count"][code] = True, counts[moved]
        table["shown_position"][code] = ends.position[moved]
        table["shown_ms"][code] = ends.ts[moved]
        return moved

    def encode(self, state: SegmentState) -> bytes:
        return b""  # all of it is keyed

    def changed_keys(self, state: SegmentState) -> dict[str, bytes | None]:
        """The changed keys' state, as `state.packed` writes it; None for keys gone."""
        table = state.table
        codes = np.flatnonzero(table["changed"])
        table["changed"][codes] = False
        live = state.live(codes)
        changed: dict[str, bytes | None] = dict.fromkeys(
            map(state.keys.__getitem__, codes[~live].tolist())
        )
        state.gone += len(changed)
        codes = codes[live]
        segments, segment_counts = state.done_of(codes.tolist())
        sessions = {name: table[name][codes] for name in SESSION.names}
        values = packed(sessions, np.frombuffer(b"".join(segments), SEGMENT), segment_counts,
                        state.pending_of(codes).records(), table["pending"][codes])  # fmt: skip
        changed.update(zip(map(state.keys.__getitem__, codes.tolist()), values, strict=True))
        state.compact()
        state.stored.update(changed)
        return state.stored.changes()

    def key_count(self, state: SegmentState) -> int:
        return len(state.stored)

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> SegmentState:
        """The state from its keys, as `changed_keys` wrote them. Raises
        `StateFormatError` for a key in another format, or for ``data`` (this operator
        writes none)."""
        refuse_partition_state("video sessions", data)
        names = list(keys)
        found = unpacked(names, list(keys.values()))
        state = SegmentState(PackedState(keys))
        codes = state.code_all(names)
        state.table.put(codes, found.sessions)
        segment_bytes = found.segments.tobytes()
        bounds = [0, *(np.cumsum(found.segment_counts) * SEGMENT.itemsize).tolist()]
        state.done = {
            code: segment_bytes[start:end]
            for code, start, end in zip(codes.tolist(), bounds, bounds[1:], strict=False)
            if end > start
        }
        pending = {name: found.events[name] for name in EVENT.names}
        state.set_pending(codes, Events(np.repeat(codes, found.event_counts), **pending))
        clocks = np.where(found.sessions["open"], found.sessions["last_ms"], 0)
        having = found.event_counts > 0
        last_pending = np.cumsum(found.event_counts)[having] - 1
        clocks[having] = np.maximum(clocks[having], found.events["ts"][last_pending])
        state.table["clock_ms"][codes], state.unarrived = clocks, codes
        return state
