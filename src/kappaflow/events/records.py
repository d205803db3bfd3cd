"""A stream's log records: each event's JSON as the client sent it (unknown fields
included), tagged with the version of the stream's schema it was validated against.

A record of version 1 is the JSON alone, as are the records of a log written before its
stream had versions, and those a producer writes into Kafka without a tag. A record of a
later version N is N in ASCII digits, the control character RS (0x1E, which JSON text
never holds unescaped), then the JSON: ``2\\x1e{"user_id": ...}``."""

from __future__ import annotations

from collections.abc import Sequence

SEPARATOR = b"\x1e"


def tag(version: int) -> bytes:
    """What records of ``version`` start with."""
    return b"" if version == 1 else b"%d\x1e" % version


def tagged(version: int, records: Sequence[bytes]) -> list[bytes]:
    """``records`` (JSON) as the log keeps them at ``version``."""
    prefix = tag(version)
    return [prefix + record for record in records] if prefix else list(records)


def untagged(record: bytes) -> tuple[int, bytes]:
    """A record's version and its JSON; raises `ValueError` for a tag that is no
    version."""
    head, separator, body = record.partition(SEPARATOR)
    if not separator:
        return 1, record
    if not (head.isdigit() and int(head) > 1):
        raise ValueError(f"the record starts with {head[:20]!r}, which names no schema version")
    return int(head), body


def as_array(records: Sequence[bytes], version: int) -> bytes | None:
    """``records`` as one JSON array, if every one is of ``version``; else None. (A record
    holding RS elsewhere is no JSON: its decode fails, alone or in the array.)"""
    prefix = tag(version)
    body = b",".join(records)
    if prefix:
        untagged = body[len(prefix) :].replace(b"," + prefix, b",")
        if not body.startswith(prefix) or len(body) - len(untagged) != len(prefix) * len(records):
            return None
        body = untagged
    return None if SEPARATOR in body else b"[" + body + b"]"
