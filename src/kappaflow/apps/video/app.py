"""The video app: heartbeats -> watched segments (`segments`), progress per
(user, video), royalties and ad impressions.

Tables: ``video_segments`` holds the segments of closed sessions (final);
``video_progress`` holds, per (user, video), the resume position (the position of
the latest event by event time) and the segments of sessions still open, to the
progress accuracy (`VideoSettings.progress_accuracy_s`). Progress merges both into the
watched intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import msgspec

from kappaflow.app import App, Lookup, Query, Stream
from kappaflow.apps.video.catalog import AD_SLOTS, UPLOAD, VIDEOS, index_slots, index_videos
from kappaflow.apps.video.events import PROGRESS, SEGMENTS, Heartbeat
from kappaflow.apps.video.reports import REPORT_QUERIES, REPORT_TABLES
from kappaflow.apps.video.segments import WatchedSegments
from kappaflow.settings import NonNegativeFloat, PositiveFloat, Settings
from kappaflow.store.base import Store

NAME = "video"


class VideoSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The video app's settings: ``KAPPAFLOW_VIDEO_<NAME>``, or a TOML table ``[video]``."""

    session_gap_s: PositiveFloat = 10.0
    """A viewing session ends after this much event time without a heartbeat."""
    progress_accuracy_s: NonNegativeFloat = 5.0
    """A (user, video)'s progress row is written again once its resume position or its
    last event time moved by more than this, or its watched segments changed in number;
    until then the row stays within this of the latest heartbeat. 0 writes it on every
    change."""


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


def progress(store: Store, user_id: str, video_id: str, partitions: int) -> Progress | None:
    """Where to resume and what was watched, open sessions included. The progress row is
    looked for in each of the stream's ``partitions`` (a seek in each), so it is found
    whichever partitioner the heartbeats' producer used."""
    found = store.query(
        "SELECT resume_position_s, open_segments FROM video_progress "
        f"WHERE partition IN ({', '.join('?' * partitions)}) AND user_id = ? AND video_id = ?",
        (*range(partitions), user_id, video_id),
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


def _progress_query(partitions: int, store: Store, params: Mapping[str, str]) -> Progress | None:
    return progress(store, params["user_id"], params["video_id"], partitions)


def progress_query(partitions: int) -> Query:
    """``GET /v1/progress/{user_id}/{video_id}`` over a stream of ``partitions``."""
    return Query(
        "/v1/progress/{user_id}/{video_id}",
        partial(_progress_query, partitions),
        "Where a user should resume a video, and what they watched (open sessions "
        "included), to the progress accuracy (5 s by default).",
        Progress,
    )


def create_app(settings: Settings) -> App:
    own = settings.app(NAME, VideoSettings)
    heartbeats = Stream("heartbeats", Heartbeat, key="user_id", time="ts", dedup_by="event_id")
    videos, slots = Lookup(VIDEOS, index_videos), Lookup(AD_SLOTS, index_slots)
    sessions = WatchedSegments(own.session_gap_s, videos, slots, own.progress_accuracy_s,
                               settings.allowed_lateness_s, settings.idle_timeout_s)  # fmt: skip
    return App(
        NAME,
        streams=[heartbeats],
        tables=[SEGMENTS, PROGRESS, *REPORT_TABLES],
        processors={heartbeats.name: sessions},
        queries=[progress_query(settings.partitions), *REPORT_QUERIES],
        lookups=[videos, slots],
        uploads=[UPLOAD],
        settings=own,
    )
