"""The video app's session rules, applied to the events of many keys at once, as columns.

Per (user, video), a viewing session is a run of events with no more than the session
gap of event time between them. Inside a session, a segment grows while the position
follows the clock: it may deviate from real-time playback by at most the gap (so 2x
playback, small rewinds and paused heartbeats are all continuous); a larger jump, or a
``seek``, ends the segment and starts one at the new position; ``pause`` and ``stop``
end it. A segment covers the positions of its events, from the time of its first event
to that of its last.

`fold` applies the rules to a `Timeline` (each key's rows in order), one rule a function:

- `starts_session`: a row starts a session when it is its key's first, or comes more
  than the gap after the row before it;
- `joins_segment`: a row joins the segment of the row before it when it is in the same
  session, the row before left its segment open, it is no seek, and its position
  followed the clock;
- `leaves_open`: a row that joins no segment starts one, and a segment stays open after
  a row, unless the row is a pause or a stop;
- `Segments.watched`: a segment of no length carries no watched time, and is dropped;
- `stays_open`: of a key's sessions in a fold, the last stays open, the others have
  ended;
- `closes`: an open session closes once its key's watermark has passed its last event
  by more than the gap: no event to come can join it.

tests/segment_fold.py applies the same rules one event at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from kappaflow.apps.video.arena import Events, joined
from kappaflow.apps.video.events import KIND_RANK, PAUSE, SEEK
from kappaflow.apps.video.reports import Segment
from kappaflow.apps.video.state import SEGMENT

HEARTBEAT = KIND_RANK["heartbeat"]


def leaves_open(rank: np.ndarray) -> np.ndarray:
    """Whether rows of kind ``rank`` leave their segment open: they are no pause or stop."""
    return rank < PAUSE


def starts_session(first: np.ndarray, elapsed_ms: np.ndarray, gap_ms: int) -> np.ndarray:
    """Whether each row starts a session: it is its key's ``first``, or comes more than the
    gap after the row before it (``elapsed_ms``)."""
    return first | (elapsed_ms > gap_ms)


def joins_segment(
    starts: np.ndarray, elapsed_ms: np.ndarray, moved: np.ndarray, rank: np.ndarray, gap_s: float
) -> np.ndarray:
    """Whether each row joins the segment of the row before it: it ``starts`` no session,
    the row before left its segment open, it is no seek, and its position ``moved`` by
    the time elapsed, give or take the gap."""
    drift = moved - elapsed_ms / 1000
    return ~starts & np.roll(leaves_open(rank), 1) & (rank != SEEK) & (np.abs(drift) <= gap_s)


class Timeline(NamedTuple):
    """Rows to fold, each key's together and in order: its open session first, if it has
    one, then its events. Beside each row's event (``events``): the segment it brings
    (``low``, ``high``, ``start_ms``: an event's own position and time), the start of the
    session it brings (``session_ms``: an event's time), and whether it is an open
    session (``carried``)."""

    events: Events
    low: np.ndarray
    high: np.ndarray
    start_ms: np.ndarray
    session_ms: np.ndarray
    carried: np.ndarray


def timeline_of(
    sessions: Mapping[str, np.ndarray], carried: np.ndarray, events: Events
) -> Timeline:
    """``events`` (each key's together, in order) after the open sessions of the
    ``carried`` codes (``sessions``: the `SESSION` fields, as columns by code). An open
    session goes in as its last event: a heartbeat that brings its open segment, or a
    pause when it has none."""
    rank = np.where(sessions["segment_open"][carried], np.int8(HEARTBEAT), np.int8(PAUSE))
    opened = Events(carried, sessions["last_ms"][carried], rank, sessions["last_position"][carried])
    rows = joined(opened, events)
    order = np.argsort(rows.code, kind="stable")  # a key's open session first
    low, high, start_ms, session_ms = (
        np.concatenate((sessions[name][carried], own))[order]
        for name, own in (
            ("low", events.position),
            ("high", events.position),
            ("start_ms", events.ts),
            ("session_ms", events.ts),
        )
    )
    return Timeline(rows.take(order), low, high, start_ms, session_ms, order < len(carried))


class Segments(NamedTuple):
    """The segments of a fold, in row order: each one's key code, session (an index into
    the fold's `Sessions`), positions covered, times of its first and last row, and
    whether it is still open."""

    code: np.ndarray
    session: np.ndarray
    low: np.ndarray
    high: np.ndarray
    start_ms: np.ndarray
    end_ms: np.ndarray
    open: np.ndarray

    def watched(self) -> np.ndarray:
        """Whether each segment carries watched time: it has a length."""
        return self.high > self.low

    def tuples(self, selected: np.ndarray) -> list[Segment]:
        """The ``selected`` segments as `reports.Segment`s."""
        columns = (self.low, self.high, self.start_ms, self.end_ms)
        return list(zip(*(column[selected].tolist() for column in columns), strict=True))

    def records(self, selected: np.ndarray) -> np.ndarray:
        """The ``selected`` segments as `SEGMENT` records."""
        records = np.zeros(len(selected), SEGMENT)
        for name in SEGMENT.names:
            records[name] = getattr(self, name)[selected]
        return records


class Sessions(NamedTuple):
    """The sessions of a fold, in row order: each one's key code, start, last row, and
    whether it is the open session its key had."""

    code: np.ndarray
    session_ms: np.ndarray
    end: np.ndarray
    carried: np.ndarray


class Fold(NamedTuple):
    """What the rules make of a `Timeline`: its ``rows``, which of them is its key's
    ``last``, and the ``segments`` and ``sessions`` they form."""

    rows: Events
    last: np.ndarray
    segments: Segments
    sessions: Sessions


def fold(timeline: Timeline, gap_ms: int, gap_s: float) -> Fold:
    """The segments and sessions the rules make of ``timeline``, with the session gap."""
    code, ts, rank, position = timeline.events
    first = np.ones(len(ts), bool)
    first[1:] = code[1:] != code[:-1]
    last = np.ones(len(ts), bool)
    last[:-1] = first[1:]
    elapsed_ms = np.diff(ts, prepend=0)
    starts = starts_session(first, elapsed_ms, gap_ms)
    joins = joins_segment(starts, elapsed_ms, np.diff(position, prepend=0.0), rank, gap_s)
    return Fold(timeline.events, last, _segments(timeline, joins, last, np.cumsum(starts) - 1),
                _sessions(timeline, starts))  # fmt: skip


def stays_open(folded: Fold) -> np.ndarray:
    """Whether each session of ``folded`` stays open: it ends with its key's last row."""
    return folded.last[folded.sessions.end]


def closes(sessions: Mapping[str, np.ndarray], watermarks: np.ndarray, gap_ms: int) -> np.ndarray:
    """Whether each open session of ``sessions`` (`SESSION` columns by code) closes: its
    key's watermark (``watermarks``, by code) has passed its last event by the gap."""
    return sessions["open"] & (sessions["last_ms"] + gap_ms < watermarks)


def _segments(
    timeline: Timeline, joins: np.ndarray, last: np.ndarray, session_of: np.ndarray
) -> Segments:
    """The segments: runs of the rows in one (those that join one or start one), each
    from a row that does not join; ``session_of`` each row is the index of its session."""
    rank = timeline.events.rank
    inside = np.flatnonzero(joins | leaves_open(rank))
    heads = np.flatnonzero(~joins[inside])  # where each segment's first row is in `inside`
    firsts, lasts = inside[heads], np.append(inside[heads[1:] - 1], inside[-1:])
    low, high = timeline.low[inside], timeline.high[inside]
    if len(heads):
        low, high = np.minimum.reduceat(low, heads), np.maximum.reduceat(high, heads)
    return Segments(timeline.events.code[firsts], session_of[firsts], low, high,
                    timeline.start_ms[firsts], timeline.events.ts[lasts],
                    last[lasts] & leaves_open(rank[lasts]))  # fmt: skip


def _sessions(timeline: Timeline, starts: np.ndarray) -> Sessions:
    """The sessions: each from a row that ``starts`` one to the row before the next."""
    firsts = np.flatnonzero(starts)
    ends = np.append(firsts[1:] - 1, len(starts) - 1)[: len(firsts)]
    return Sessions(timeline.events.code[firsts], timeline.session_ms[firsts], ends,
                    timeline.carried[firsts])  # fmt: skip


def segment_tuples(records: np.ndarray) -> list[Segment]:
    """`SEGMENT` records as `reports.Segment`s: (start_s, end_s, start_ms, end_ms)."""
    return records[["low", "high", "start_ms", "end_ms"]].tolist() if len(records) else []
