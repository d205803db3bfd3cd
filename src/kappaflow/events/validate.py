"""Decode a request body of events against a stream's schema: one JSON object, a JSON
array, or NDJSON. A valid body decodes in one call (NDJSON: one call per line); otherwise
each record is decoded on its own to name every bad one (index, field, reason)."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from kappaflow.errors import MAX_PROBLEMS, InvalidEvents
from kappaflow.events import NOT_IN_IDENTIFIERS, Identifier

_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What decoding untrusted JSON raises: msgspec raises `RecursionError` for values nested
deeper than Python's recursion limit allows (about 1,000 levels)."""
TOO_DEEP = "nested too deeply (JSON is refused past about 1,000 levels)"
BACKSLASH, SLASH, DEL = b"\\/\x7f"  # as ints: a byte's membership test is a memchr


class Problem(msgspec.Struct):
    """What is wrong with one record: ``index`` in the body (None: the body itself): the
    record's position in an array, or its line in NDJSON (from 0, blank lines counted)."""

    index: int | None
    field: str | None
    reason: str


class Identifiers:
    """The fields of a struct type typed `Identifier` (or `Identifier | None`), and a
    check that their values hold no character `NOT_IN_IDENTIFIERS`."""

    def __init__(self, schema: type[msgspec.Struct]) -> None:
        hints = typing.get_type_hints(schema, include_extras=True)
        self.fields = [
            (attribute, name)
            for attribute, name in zip(
                schema.__struct_fields__, schema.__struct_encode_fields__, strict=True
            )
            if any(
                hint is Identifier
                for hint in (hints[attribute], *typing.get_args(hints[attribute]))
            )
        ]
        """(attribute, name in JSON) of each identifier field."""

    def valid(self, records: Sequence[Any]) -> bool:
        """Whether every identifier of ``records`` is valid: one search per field."""
        return not any(
            NOT_IN_IDENTIFIERS.search("".join(filter(None, map(attrgetter(attribute), records))))
            for attribute, _ in self.fields
        )

    def problem(self, record: Any) -> tuple[str, str] | None:
        """(field, reason) of the first invalid identifier of ``record``, if any."""
        for attribute, name in self.fields:
            value = getattr(record, attribute)
            if value is not None and (found := NOT_IN_IDENTIFIERS.search(value)):
                return name, (f"{value!r} holds {found.group()!r}: an identifier may not hold "
                              "control characters (U+0000 to U+001F, U+007F) or '/'")  # fmt: skip
        return None


class Decoded(NamedTuple):
    """A body's events, and each one's JSON as it came (its log record)."""

    events: list[Any]
    records: list[bytes]


class EventDecoder:
    def __init__(self, schema: type[msgspec.Struct]) -> None:
        self._identifiers = Identifiers(schema)
        self._one_or_many = msgspec.json.Decoder(schema | list[schema])  # type: ignore[valid-type]
        self._one = msgspec.json.Decoder(schema)
        self._raw = msgspec.json.Decoder(msgspec.Raw)
        self._raw_list = msgspec.json.Decoder(list[msgspec.Raw])

    def decode_json(self, body: bytes) -> Decoded:
        """A JSON object or array of objects -> events; raises `InvalidEvents`."""
        try:
            decoded = self._one_or_many.decode(body)
        except DECODE_ERRORS:
            pass
        else:
            if not isinstance(decoded, list):
                if self._identifiers_valid(body, [decoded]):
                    return Decoded([decoded], [body.strip()])
            elif self._identifiers_valid(body, decoded):
                return Decoded(decoded, list(map(bytes, self._raw_list.decode(body))))
        try:
            raw = self._raw.decode(body)
        except DECODE_ERRORS as error:
            reason = TOO_DEEP if isinstance(error, RecursionError) else f"not valid JSON: {error}"
            raise InvalidEvents([Problem(None, None, f"body is {reason}")]) from None
        if body.lstrip().startswith(b"["):
            return self._each(enumerate(map(bytes, self._raw_list.decode(body))))
        return self._each([(0, bytes(raw))])

    def decode_ndjson(self, body: bytes) -> Decoded:
        """One JSON object per line (blank lines ignored) -> events."""
        lines = body.split(b"\n")
        try:
            records = list(filter(None, lines))
            events = list(map(self._one.decode, records))
            if self._identifiers_valid(body, events):
                return Decoded(events, records)
        except DECODE_ERRORS:
            pass
        return self._each((n, line) for n, line in enumerate(lines) if line.strip())

    def _identifiers_valid(self, body: bytes, events: list[Any]) -> bool:
        # A JSON string holds a control character only escaped: a body with no
        # backslash, '/' or DEL needs no look at its events.
        if not (self._identifiers.fields and (BACKSLASH in body or SLASH in body or DEL in body)):
            return True
        return self._identifiers.valid(events)

    def _each(self, records: Iterable[tuple[int, bytes]]) -> Decoded:
        """Each (index, record) decoded on its own; raises `InvalidEvents` naming the bad."""
        decoded, problems, invalid = Decoded([], []), [], 0
        for index, record in records:
            try:
                event = self._one.decode(record)
            except DECODE_ERRORS as error:
                problem = decode_problem(index, error)
            else:
                if (found := self._identifiers.problem(event)) is None:
                    decoded.events.append(event)
                    decoded.records.append(record)
                    continue
                problem = Problem(index, *found)
            invalid += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(problem)
        if problems:
            raise InvalidEvents(problems, invalid)
        return decoded


def decode_problem(
    index: int | None, error: msgspec.DecodeError | UnicodeDecodeError | RecursionError
) -> Problem:
    """What is wrong with the record at ``index`` (None: the body) that ``error`` says."""
    if isinstance(error, UnicodeDecodeError):  # msgspec checks UTF-8 where it reads strings
        return Problem(index, None, f"a string is not valid UTF-8 ({error.reason})")
    if isinstance(error, RecursionError):
        return Problem(index, None, TOO_DEEP)
    reason, path = error_path(error)
    if not isinstance(error, msgspec.ValidationError):
        reason = f"not valid JSON: {reason}"
    return Problem(index, path.lstrip(".") or None, reason)


def error_path(error: msgspec.DecodeError | UnicodeDecodeError) -> tuple[str, str]:
    """A decode error's reason and the path it names without the leading ``$``, a
    missing or unknown field's name included: ``.videos[2].title``; ``""`` for the
    whole value."""
    reason, _, path = str(error).partition(" - at `")
    path = path.rstrip("`").removeprefix("$")
    if named := _NAMED_FIELD.search(reason):
        path = f"{path}.{named.group(1)}"
    return reason, path
