"""The video app's segment rules as a `SessionFold`, one item at a time: the fold the
library's `SessionWindows` operator is tested with, and a second implementation the
video app's columnar operator is checked against."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from kappaflow.app import App, Batch, Lookup, Output
from kappaflow.apps.video.app import VideoSettings
from kappaflow.apps.video.catalog import Licence, Slots
from kappaflow.apps.video.events import (
    KIND_RANK,
    PAUSE,
    PROGRESS,
    SEEK,
    SEGMENTS,
    Heartbeat,
    key_ids,
    session_keys,
)
from kappaflow.apps.video.reports import report_rows
from kappaflow.settings import Settings
from kappaflow.stream.sessions import Rows, SessionState, SessionWindows

# start_ms, end_ms]: the positions covered and the event times of the first and last
# heartbeat; a closed segment is never changed, and closing one makes a new list of them.
Acc = list[Any]
# A heartbeat as the session operator orders it: (event ms, kind rank, position).
Item = tuple[int, int, float]


class SegmentFold:
    """The `SessionFold` turning a (user, video) session into watched segments."""

    def __init__(
        self, gap_s: float, videos: Lookup[dict[str, Licence]], slots: Lookup[dict[str, Slots]]
    ) -> None:
        self.gap_s = gap_s
        self.videos = videos
        self.slots = slots
        self._json = msgspec.json.Encoder()

    def items(
        self, events: list[Heartbeat], times_ms: list[int], offsets: list[int]
    ) -> list[tuple[str, Item]]:
        return [
            (key, (ms, KIND_RANK[e.kind], e.position_s))
            for key, e, ms in zip(session_keys(events), events, times_ms, strict=True)
        ]

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


def _close(segments: list[list[float]], segment: list[float]) -> list[list[float]]:
    return [*segments, segment] if segment[1] > segment[0] else segments


def session_segments(acc: Acc) -> list[list[float]]:
    """A session's segments, the current one included if it has length."""
    current = acc[2]
    return _close(acc[1], current) if current is not None else acc[1]


class PartitionedWindows(SessionWindows):
    """`SessionWindows` with each batch's partition put first in its progress rows, as
    the table's key has it: a `SessionFold` is not told the partition."""

    def process(self, state: SessionState, batch: Batch) -> Output[SessionState]:
        output = super().process(state, batch)
        if progress := output.rows.get(PROGRESS.name):
            output.rows[PROGRESS.name] = [(batch.partition, *row) for row in progress]
        return output


def with_session_windows(app: App, settings: Settings) -> App:
    """The video app ``app`` with its heartbeats processed by `SessionWindows` and
    `SegmentFold` instead of its own operator."""
    gap_s = settings.app("video", VideoSettings).session_gap_s
    fold = SegmentFold(gap_s, *app.lookups)
    sessions = PartitionedWindows(fold, round(gap_s * 1000),
                                  round(settings.allowed_lateness_s * 1000),
                                  round(settings.idle_timeout_s * 1000))  # fmt: skip
    return dataclasses.replace(app, processors={"heartbeats": sessions})
