"""Video heartbeats -> watched segments and progress per (user, video).

A player sends a heartbeat about every 5 s with its position. Per (user, video), a
viewing session is a run of events with no more than the session gap of event time
between them. Inside a session, a segment grows while the position follows the
clock: it may deviate from real-time playback by at most the gap (so 2x playback,
small rewinds and paused heartbeats are all continuous); a larger jump, or a
``seek``, closes the segment and opens one at the new position; ``pause`` and
``stop`` close it. Segments of zero length carry no watched time and are dropped.

Tables: ``video_segments`` holds the segments of closed sessions (final);
``video_progress`` holds, per (user, video), the resume position (the position of
the latest event by event time) and the segments of sessions still open. Progress
merges both into the watched intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from kappaflow.app import App, Lookup, Query, Stream, Upload
from kappaflow.apps.video_catalog import (
    AD_SLOTS,
    VIDEOS,
    Licence,
    Slots,
    index_slots,
    index_videos,
    upload,
)
from kappaflow.apps.video_reports import REPORT_QUERIES, REPORT_TABLES, report_rows
from kappaflow.events import EventTime, Identifier
from kappaflow.settings import Settings
from kappaflow.store.base import Store, Table
from kappaflow.stream.sessions import Rows, SessionWindows

Kind = Literal["heartbeat", "play", "pause", "seek", "stop"]
# Tie-break between events of one key at the same millisecond; pause and stop rank last.
KIND_RANK = {"play": 0, "seek": 1, "heartbeat": 2, "pause": 3, "stop": 4}
SEEK, PAUSE = KIND_RANK["seek"], KIND_RANK["pause"]
KEY_SEPARATOR = "\x1f"


class Heartbeat(msgspec.Struct, omit_defaults=True, gc=False):
    user_id: Identifier
    video_id: Identifier
    position_s: Annotated[float, Meta(ge=0)]
    ts: EventTime
    kind: Kind = "heartbeat"
    event_id: str | None = None


SEGMENTS = Table(
    "video_segments",
    columns=(
        ("user_id", "TEXT"),
        ("video_id", "TEXT"),
        ("session_ms", "INTEGER"),
        ("segment_no", "INTEGER"),
        ("start_s", "REAL"),
        ("end_s", "REAL"),
        ("start_ms", "INTEGER"),
        ("end_ms", "INTEGER"),
    ),
    key=("user_id", "video_id", "session_ms", "segment_no"),
)
PROGRESS = Table(
    "video_progress",
    columns=(
        ("user_id", "TEXT"),
        ("video_id", "TEXT"),
        ("resume_position_s", "REAL"),
        ("last_event_ms", "INTEGER"),
        ("open_segments", "TEXT"),
    ),
    key=("user_id", "video_id"),
)

# A session accumulator, changed in place by `extend`: [session start ms, closed segments,
# current segment or None, last event ms, last position]. Segments are [start_s, end_s,
# start_ms, end_ms]: the positions covered and the event times of the first and last
# heartbeat; a closed segment is never changed, and closing one makes a new list of them.
Acc = list[Any]
# A heartbeat as the session operator orders it: (event ms, kind rank, position).
Item = tuple[int, int, float]


class WatchedSegments:
    """The `SessionFold` turning a (user, video) session into watched segments."""

    def __init__(
        self, gap_s: float, videos: Lookup[dict[str, Licence]], slots: Lookup[dict[str, Slots]]
    ) -> None:
        self.gap_s = gap_s
        self.videos = videos
        self.slots = slots
        self._json = msgspec.json.Encoder()

    def items(self, events: list[Heartbeat], times_ms: list[int]) -> list[tuple[str, Item]]:
        keyed = [  # `session_key`'s usual case, inline: a call per event costs more
            (f"{e.user_id}{KEY_SEPARATOR}{e.video_id}", (ms, KIND_RANK[e.kind], e.position_s))
            for e, ms in zip(events, times_ms, strict=True)
        ]
        if "".join([key for key, _ in keyed]).count(KEY_SEPARATOR) != len(keyed):
            # An identifier holds the separator itself (rare): those keys are escaped.
            keyed = [(session_key(e), item) for e, (_, item) in zip(events, keyed, strict=True)]
        return keyed

    def start(self, item: Item) -> Acc:
        ts, rank, position = item
        current = None if rank >= PAUSE else [position, position, ts, ts]
        return [ts, [], current, ts, position]

    def extend(self, acc: Acc, items: list[Item]) -> Acc:
        _, closed, current, last_ts, last_position = acc
        gap_s = self.gap_s
        for ts, rank, position in items:
            if current is not None:
                drift = (position - last_position) - (ts - last_ts) / 1000
                if rank != SEEK and abs(drift) <= gap_s:
                    if position < current[0]:
                        current[0] = position
                    elif position > current[1]:
                        current[1] = position
                    current[3] = ts
                    if rank >= PAUSE:
                        closed, current = _close(closed, current), None
                else:
                    closed = _close(closed, current)
                    current = None if rank >= PAUSE else [position, position, ts, ts]
            elif rank < PAUSE:
                current = [position, position, ts, ts]
            last_ts, last_position = ts, position
        acc[1] = closed
        acc[2] = current
        acc[3] = last_ts
        acc[4] = last_position
        return acc

    def copy(self, acc: Acc) -> Acc:
        current = acc[2]
        return [acc[0], acc[1], None if current is None else current[:], acc[3], acc[4]]

    def closed(self, key: str, acc: Acc, rows: Rows) -> None:
        user_id, video_id = key_ids(key)
        session_ms = acc[0]
        segments = session_segments(acc)
        rows.setdefault(SEGMENTS.name, []).extend(
            (user_id, video_id, session_ms, number, *segment)
            for number, segment in enumerate(segments)
        )
        rows.setdefault(PROGRESS.name, []).append((user_id, video_id, acc[4], acc[3], "[]"))
        report_rows(user_id, video_id, segments, self.videos.data, self.slots.data, rows)

    def view(self, key: str, accs: list[Acc], rows: Rows) -> None:
        user_id, video_id = key_ids(key)
        open_segments = [segment[:2] for acc in accs for segment in session_segments(acc)]
        last = accs[-1]
        rows.setdefault(PROGRESS.name, []).append(
            (user_id, video_id, last[4], last[3], self._json.encode(open_segments).decode())
        )


def session_key(event: Heartbeat) -> str:
    """The key of the event's (user, video): the two joined by ``KEY_SEPARATOR``, or,
    when either holds that character, the separator then the pair as JSON."""
    user_id, video_id = event.user_id, event.video_id
    if KEY_SEPARATOR in user_id or KEY_SEPARATOR in video_id:
        return KEY_SEPARATOR + msgspec.json.encode([user_id, video_id]).decode()
    return f"{user_id}{KEY_SEPARATOR}{video_id}"


def key_ids(key: str) -> tuple[str, str]:
    """The (user, video) of a `session_key`."""
    if key.startswith(KEY_SEPARATOR):
        user_id, video_id = msgspec.json.decode(key[1:], type=tuple[str, str])
    else:
        user_id, video_id = key.split(KEY_SEPARATOR)
    return user_id, video_id


def _close(segments: list[list[float]], segment: list[float]) -> list[list[float]]:
    return [*segments, segment] if segment[1] > segment[0] else segments


def session_segments(acc: Acc) -> list[list[float]]:
    """A session's segments, the current one included if it has length."""
    current = acc[2]
    return _close(acc[1], current) if current is not None else acc[1]


def merge_intervals(segments: list[list[float]] | list[tuple[float, float]]) -> list[list[float]]:
    """The union of intervals, as sorted disjoint intervals (touching ones joined)."""
    merged: list[list[float]] = []
    for start, end in sorted(segments):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


class Segment(msgspec.Struct):
    start_s: float
    end_s: float


class Progress(msgspec.Struct):
    """Where a user should resume a video, and the distinct intervals they watched."""

    user_id: str
    video_id: str
    resume_position_s: float
    watched_s: float
    segments: list[Segment]

    @property
    def intervals(self) -> list[list[float]]:
        return [[segment.start_s, segment.end_s] for segment in self.segments]


def progress(store: Store, user_id: str, video_id: str) -> Progress | None:
    """Where to resume and what was watched, open sessions included."""
    found = store.query(
        "SELECT resume_position_s, open_segments FROM video_progress "
        "WHERE user_id = ? AND video_id = ?",
        (user_id, video_id),
    )
    if not found:
        return None
    resume, open_segments = found[0]
    closed = store.query(
        "SELECT start_s, end_s FROM video_segments WHERE user_id = ? AND video_id = ?",
        (user_id, video_id),
    )
    return _progress(user_id, video_id, resume, closed, msgspec.json.decode(open_segments))


def all_progress(store: Store) -> list[Progress]:
    """Progress of every (user, video), sorted by key."""
    closed: dict[tuple[str, str], list[Any]] = {}
    for user_id, video_id, start, end in store.query(
        "SELECT user_id, video_id, start_s, end_s FROM video_segments"
    ):
        closed.setdefault((user_id, video_id), []).append((start, end))
    return [
        _progress(user, video, resume, closed.get((user, video), []), msgspec.json.decode(open_))
        for user, video, resume, open_ in store.query(
            "SELECT user_id, video_id, resume_position_s, open_segments FROM video_progress "
            "ORDER BY user_id, video_id"
        )
    ]


def _progress(
    user_id: str, video_id: str, resume: float, closed: list[Any], open_segments: list[Any]
) -> Progress:
    merged = merge_intervals([*map(tuple, closed), *map(tuple, open_segments)])
    watched = sum(end - start for start, end in merged)
    return Progress(user_id, video_id, resume, watched, [Segment(*m) for m in merged])


def _progress_query(store: Store, params: Mapping[str, str]) -> Progress | None:
    return progress(store, params["user_id"], params["video_id"])


PROGRESS_QUERY = Query(
    "/v1/progress/{user_id}/{video_id}",
    _progress_query,
    "Where a user should resume a video, and what they watched (open sessions included).",
    Progress,
)


def create_app(settings: Settings) -> App:
    heartbeats = Stream("heartbeats", Heartbeat, key="user_id", time="ts")
    videos, slots = Lookup(VIDEOS, index_videos), Lookup(AD_SLOTS, index_slots)
    fold = WatchedSegments(settings.session_gap_s, videos, slots)
    sessions = SessionWindows(fold, gap_ms=round(settings.session_gap_s * 1000))
    return App(
        "video",
        streams=[heartbeats],
        tables=[SEGMENTS, PROGRESS, *REPORT_TABLES],
        processors={heartbeats.name: sessions},
        queries=[PROGRESS_QUERY, *REPORT_QUERIES],
        lookups=[videos, slots],
        uploads=[Upload("/v1/catalog", upload, "Add or replace videos and ad slots.")],
    )
