"""Dead letters as a user sees them and acts on them: the records the workers could not
process (late, undecodable, refused by an app's processor), listed with filters
(``GET /v1/dead-letters``, ``kappaflow dead-letters list``) and, once the cause is
fixed, replayed into their stream's log (``kappaflow dead-letters replay``). Both take
the same filters, as query-string parameters or as the command's options."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import msgspec

from kappaflow.app import App, Param, Query, Stream
from kappaflow.errors import InvalidQuery
from kappaflow.log.base import Log
from kappaflow.query.params import int_param, ranges_param, time_param
from kappaflow.store.base import DeadLetterFilter, Store, StoredDeadLetter

PATH = "/v1/dead-letters"
LIMIT, MAX_LIMIT = 100, 10_000
MAX_PARTITION = 2**31 - 1
REPLAY_BATCH = 1_000
"""Dead letters a replay appends to the log at a time, in one append."""

Streams = dict[str, tuple[App, Stream]]
"""Group -> the app and stream it processes."""


class DeadLetterInfo(msgspec.Struct):
    """A dead letter as it is listed."""

    app: str
    stream: str
    group: str
    partition: int
    offset: int
    reason: str
    """Why: ``kind: details``, such as ``late: event time ... is below the watermark
    ...``, ``undecodable: ...``, or what the app's processor said."""
    record: str
    """The record as the log holds it: its text when it is UTF-8, else base64."""
    encoding: Literal["utf-8", "base64"]
    """Which of the two ``record`` is."""
    dead_lettered_at: float
    """When the worker's commit wrote it (Unix seconds). For a dead letter kept before
    kappaflow kept this time: when the store was upgraded."""


PARAMS = {
    "stream": Param("only the dead letters of this stream (default: of every stream)"),
    "reason": Param("only those of this reason kind: the reason up to its first colon, "
                    "such as late, undecodable, or a word of the app's processor"),
    "since": Param("only those dead-lettered at or after this time (unix seconds, or RFC "
                   "3339 with a zone)"),
    "partition": Param("only those of this partition"),
    "offsets": Param("only those at these offsets of the partition, such as 10,12-15"),
    "limit": Param(f"at most this many, the newest first: 1 to {MAX_LIMIT} (default {LIMIT})"),
}  # fmt: skip
SUMMARY = (
    "Dead letters, the newest first: records the workers could not process (late, "
    "undecodable, refused by an app), each with its stream, partition, offset, reason, the "
    "record (UTF-8 text, else base64) and when (stream, reason, since, partition, offsets, "
    "limit). JSON, or CSV with Accept: text/csv or format=csv."
)


def query(apps: Sequence[App]) -> Query:
    """``GET /v1/dead-letters``, served beside the apps' queries."""
    return Query(PATH, lambda store, params: listing(apps, store, params), SUMMARY,
                 list[DeadLetterInfo], PARAMS)  # fmt: skip


def listing(apps: Sequence[App], store: Store, params: Mapping[str, str]) -> list[DeadLetterInfo]:
    """The dead letters ``params`` select (see `PARAMS`), the newest first."""
    streams, which = select(apps, params)
    limit = int_param(params, "limit", LIMIT, 1, MAX_LIMIT)
    return [info(*streams[found.group], found) for found in store.find_dead_letters(which, limit)]


def select(apps: Sequence[App], params: Mapping[str, str]) -> tuple[Streams, DeadLetterFilter]:
    """The app streams and the filter ``params`` name; raises `InvalidQuery` naming a
    parameter that is wrong."""
    name = params.get("stream") or None
    streams = {app.group(stream): (app, stream) for app in apps for stream in app.streams
               if name in (None, stream.name)}  # fmt: skip
    if not streams:
        known = sorted({stream.name for app in apps for stream in app.streams})
        raise InvalidQuery(f"stream must be one of {', '.join(known)}, got {name!r}")
    partition = params.get("partition")
    offsets = ranges_param(params, "offsets")
    if offsets and not partition:
        raise InvalidQuery("offsets need a partition: each partition counts its own offsets")
    which = DeadLetterFilter(
        list(streams),
        params.get("reason") or None,
        time_param(params, "since"),
        int_param(params, "partition", 0, 0, MAX_PARTITION) if partition else None,
        offsets,
    )
    return streams, which


def info(app: App, stream: Stream, found: StoredDeadLetter) -> DeadLetterInfo:
    encoding: Literal["utf-8", "base64"] = "utf-8"
    try:
        record = found.payload.decode()
    except UnicodeDecodeError:
        record, encoding = base64.b64encode(found.payload).decode(), "base64"
    return DeadLetterInfo(app.name, stream.name, found.group, found.partition, found.offset,
                          found.reason, record, encoding, found.at)  # fmt: skip


class Replay(NamedTuple):
    """What a replay takes: the dead letters ``which`` selects, of one ``stream``."""

    stream: Stream
    group: str
    which: DeadLetterFilter


def plan_replay(apps: Sequence[App], params: Mapping[str, str]) -> Replay:
    """The replay of the dead letters ``params`` select (see `PARAMS`; ``limit``
    aside), which must name a stream that one app reads; raises `InvalidQuery`."""
    if not params.get("stream"):
        raise InvalidQuery("stream is required: a replay appends to one stream's log")
    streams, which = select(apps, params)
    (group, (_, stream)), *others = streams.items()
    if others:
        names = ", ".join(app.name for app, _ in streams.values())
        raise InvalidQuery(f"stream {stream.name} is read by apps {names}: each of them would "
                           "process a replayed record again")  # fmt: skip
    return Replay(stream, group, which)


def replay(log: Log, store: Store, plan: Replay) -> dict[int, int]:
    """Append the dead letters of ``plan`` to their stream's log, each on its own
    partition, in offset order, then remove them from the dead letters; the workers
    process them again at their new offsets. Returns how many were replayed, by
    partition.

    A record leaves the dead letters only once it is durably in the log again: a replay
    cut short between the two (a crash, the store gone) appends it again when run
    again. Only the dead letters below each partition's end at the start are taken, so
    records this replay appends and a worker dead-letters again are not replayed again."""
    stream, group, which = plan
    replayed: dict[int, int] = {}
    for partition, end in sorted(log.end_offsets(stream.name).items()):
        ranges = [(low, min(high, end - 1)) for low, high in which.offsets or [(0, end - 1)]]
        ranges = [(low, high) for low, high in ranges if low <= high]
        if which.partition not in (None, partition) or not ranges:
            continue
        taken = which._replace(partition=partition, offsets=ranges)
        while letters := store.find_dead_letters(taken, REPLAY_BATCH, newest_first=False):
            log.append(stream.name, partition, [letter.payload for letter in letters])
            store.delete_dead_letters(group, partition, [letter.offset for letter in letters])
            replayed[partition] = replayed.get(partition, 0) + len(letters)
    return replayed
