"""The video app's events and tables: heartbeats, the session key of a (user, video),
and the tables of watched segments and progress."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from kappaflow.events import EventId, EventTime, Identifier
from kappaflow.store.base import Table

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
    event_id: EventId | None = None


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
        ("partition", "INTEGER"),
        ("user_id", "TEXT"),
        ("video_id", "TEXT"),
        ("resume_position_s", "REAL"),
        ("last_event_ms", "INTEGER"),
        ("open_segments", "TEXT"),
    ),
    key=("partition", "user_id", "video_id"),
)
"""Keyed by the partition of the user's heartbeats first, so that the rows of each
partition are together in the table: a worker's commit rewrites the pages of its own
partitions only, not a page of every part of the table
(docs/decisions/028-progress-rows-by-partition.md)."""


def session_key(event: Heartbeat) -> str:
    """The key of the event's (user, video): the two joined by ``KEY_SEPARATOR``, or,
    when either holds that character, the separator then the pair as JSON."""
    user_id, video_id = event.user_id, event.video_id
    if KEY_SEPARATOR in user_id or KEY_SEPARATOR in video_id:
        return KEY_SEPARATOR + msgspec.json.encode([user_id, video_id]).decode()
    return f"{user_id}{KEY_SEPARATOR}{video_id}"


def session_keys(events: list[Heartbeat]) -> list[str]:
    """The `session_key` of each of ``events``, joined in one pass when no identifier
    holds the separator (the usual case; a call per event costs more)."""
    keys = [f"{e.user_id}{KEY_SEPARATOR}{e.video_id}" for e in events]
    if "".join(keys).count(KEY_SEPARATOR) != len(keys):
        keys = [session_key(e) for e in events]
    return keys


def key_ids(key: str) -> tuple[str, str]:
    """The (user, video) of a `session_key`."""
    if key.startswith(KEY_SEPARATOR):
        user_id, video_id = msgspec.json.decode(key[1:], type=tuple[str, str])
    else:
        user_id, video_id = key.split(KEY_SEPARATOR)
    return user_id, video_id


def keys_ids(keys: list[str]) -> tuple[list[str], list[str]]:
    """The users and the videos of `session_key`s, split in one pass when none is
    escaped (identifiers are never empty, so an escaped key's user would be)."""
    parts = KEY_SEPARATOR.join(keys).split(KEY_SEPARATOR)
    users, videos = parts[0::2], parts[1::2]
    if len(parts) == 2 * len(keys) and "" not in users:
        return users, videos
    pairs = [key_ids(key) for key in keys]
    return [user for user, _ in pairs], [video for _, video in pairs]
