"""The schema of each version of each stream that the log holds records of, kept in the
log itself (topic `TOPIC`, one partition, which retention leaves alone), as a schema
registry keeps them beside Kafka's topics.

Ingest registers each version of its streams before it takes their records
(`register`), and a worker checks its stream (`check`) before it reads one: both refuse
to start, naming the field and the change, when a declared schema can no longer read
the records of its version in the log (`kappaflow.events.versions.changes`), when a
version in the log is no longer declared, or when a version changes without an
upcaster. Checked from the schemas, not by scanning the log."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec

from kappaflow.app import Stream
from kappaflow.errors import AppError, LogUnavailable
from kappaflow.events.versions import changes, json_schema
from kappaflow.log.base import Log, once_known

TOPIC = "kappaflow-schemas"
READ_RECORDS = 1_000
READ_TIMEOUT_S = 30.0
"""How long reads of the registry may fail or return nothing (Kafka's while it creates
the topic or fetches)."""


class Registered(msgspec.Struct):
    """One record of `TOPIC`: the schema of ``stream``'s ``version`` (a JSON Schema);
    a later record of the same version replaces it."""

    stream: str
    version: int
    schema: dict[str, Any]


def registered(log: Log) -> dict[tuple[str, int], dict[str, Any]]:
    """Each (stream, version) registered, with its schema."""
    log.create_topic(TOPIC, 1, forever=True)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    deadline = time.monotonic() + READ_TIMEOUT_S
    offset, end = once_known(lambda: (log.start_offsets(TOPIC)[0], log.end_offsets(TOPIC)[0]),
                             READ_TIMEOUT_S)  # fmt: skip
    decode = msgspec.json.Decoder(Registered).decode
    while offset < end:
        batch = log.read(TOPIC, 0, offset, READ_RECORDS)
        for value in batch.values:
            record = decode(value)
            found[record.stream, record.version] = record.schema
        if batch.next_offset == offset and time.monotonic() > deadline:
            raise LogUnavailable(f"cannot read the schemas registered in topic {TOPIC!r}: "
                                 f"the reads stopped at offset {offset} of {end}")  # fmt: skip
        offset = batch.next_offset
    return found


def check(log: Log, streams: Iterable[Stream]) -> list[Registered]:
    """Raise `AppError` naming each problem of ``streams``' declared versions against
    each other and the registered ones; else the declared versions not registered as
    they are declared now."""
    known = registered(log)
    problems, new = [], []
    for stream in streams:
        declared = [json_schema(stream.schema_of(v)) for v in range(1, stream.version + 1)]
        for version, earlier in enumerate(stream.earlier, start=1):
            if earlier.upcast is None:
                problems += [
                    f"stream {stream.name!r}: version {version + 1} has no upcaster from "
                    f"version {version}, and its {change}"
                    for change in changes(declared[version - 1], declared[version])
                ]
        for (name, version), schema in sorted(known.items()):
            if name != stream.name:
                continue
            if version > stream.version:
                problems.append(
                    f"stream {name!r}: the log holds records of version {version}, and the "
                    f"app declares versions 1 to {stream.version}: declare it again"
                )
                continue
            problems += [
                f"stream {name!r}: version {version} was changed in place, and its {change}, "
                "so the records of that version in the log cannot be read: declare the "
                f"change as version {stream.version + 1} with an upcaster"
                for change in changes(schema, declared[version - 1])
            ]
        new += [
            Registered(stream.name, version, schema)
            for version, schema in enumerate(declared, start=1)
            if known.get((stream.name, version)) != schema
        ]
    if problems:
        raise AppError("the schemas cannot read the log:\n- " + "\n- ".join(problems))
    return new


def register(log: Log, streams: Iterable[Stream]) -> None:
    """`check` ``streams``, then register their versions not registered as declared."""
    new = check(log, streams)
    if new:
        log.append(TOPIC, 0, [msgspec.json.encode(record) for record in new])
