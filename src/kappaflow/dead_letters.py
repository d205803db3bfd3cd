"""Dead letters as a user sees them and acts on them: the records the workers could not
process (late, undecodable, refused by an app's processor), listed with filters
(``GET /v1/dead-letters``, ``kappaflow dead-letters list``) and, once the cause is
fixed, replayed into their stream's log (``kappaflow dead-letters replay``). Both take
the same filters, as query-string parameters or as the command's options."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

from kappaflow.app import App, Param, Query, Stream
from kappaflow.errors import InvalidQuery
from kappaflow.log.base import Log
from kappaflow.query.params import Ranges, UnixTime, describe, parse_ranges, seconds
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


def params(apps: Sequence[App]) -> dict[str, Param]:
    """The filters of the dead letters of ``apps``' streams, by name."""
    names = tuple(sorted({stream.name for app in apps for stream in app.streams}))
    stream = Param("only the dead letters of this stream (default: of every stream)",
                   type=Literal[names])  # fmt: skip
    return {
        **({"stream": stream} if names else {}),
        "reason": Param("only those of this reason kind: the reason up to its first colon, "
                        "such as late, undecodable, or a word of the app's processor "
                        "(empty: any)"),
        "since": Param("only those dead-lettered at or after this time", type=UnixTime),
        "partition": Param("only those of this partition",
                           type=Annotated[int, Meta(ge=0, le=MAX_PARTITION)]),
        "offsets": Param("only those at these offsets of the partition (which must be "
                         "given), such as 10,12-15, each range low to high", type=Ranges),
        "limit": Param(f"at most this many, the newest first (default {LIMIT})",
                       type=Annotated[int, Meta(ge=1, le=MAX_LIMIT)]),
    }  # fmt: skip


SUMMARY = (
    "Dead letters, the newest first: records the workers could not process (late, "
    "undecodable, refused by an app), each with its stream, partition, offset, reason, the "
    "record (UTF-8 text, else base64) and when (stream, reason, since, partition, offsets, "
    "limit). JSON, or CSV with Accept: text/csv or format=csv."
)


def query(apps: Sequence[App]) -> Query:
    """``GET /v1/dead-letters``, served beside the apps' queries."""
    return Query(PATH, lambda store, given: listing(apps, store, given), SUMMARY,
                 list[DeadLetterInfo], params(apps))  # fmt: skip


def listing(apps: Sequence[App], store: Store, given: Mapping[str, Any]) -> list[DeadLetterInfo]:
    """The dead letters the parameters ``given`` select (converted: see `params`), the
    newest first."""
    streams, which = select(apps, given)
    return [
        info(*streams[found.group], found)
        for found in store.find_dead_letters(which, given.get("limit", LIMIT))
    ]


def select(apps: Sequence[App], given: Mapping[str, Any]) -> tuple[Streams, DeadLetterFilter]:
    """The app streams and the filter the parameters ``given`` (converted: see `params`)
    name; raises `InvalidQuery` for offsets that are not ranges low to high, or without
    a partition."""
    name = given.get("stream")
    streams = {app.group(stream): (app, stream) for app in apps for stream in app.streams
               if name in (None, stream.name)}  # fmt: skip
    partition, since = given.get("partition"), given.get("since")
    text = given.get("offsets", "")
    try:
        offsets = parse_ranges(text) if text else []
    except ValueError:
        raise InvalidQuery(f"offsets must be {describe(Ranges)}, got {text!r}") from None
    if offsets and partition is None:
        raise InvalidQuery("offsets need a partition: each partition counts its own offsets")
    reason, since_s = given.get("reason") or None, None if since is None else seconds(since)
    return streams, DeadLetterFilter(list(streams), reason, since_s, partition, offsets)


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


def plan_replay(apps: Sequence[App], given: Mapping[str, Any]) -> Replay:
    """The replay of the dead letters the parameters ``given`` select (converted: see
    `params`; ``limit`` aside), which must name a stream that one app version reads (of
    ``apps``, every version running); raises `InvalidQuery`."""
    if "stream" not in given:
        raise InvalidQuery("stream is required: a replay appends to one stream's log")
    streams, which = select(apps, given)
    (group, (_, stream)), *others = streams.items()
    if others:
        names = ", ".join(app.name if app.version == 1 else app.ref for app, _ in streams.values())
        raise InvalidQuery(f"stream {stream.name} is read by apps {names}: each of them would "
                           "process a replayed record again (retire all versions of an app "
                           "but one first: docs/change-an-app.md)")  # fmt: skip
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
