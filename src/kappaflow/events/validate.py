"""Decode a request body of events against a stream's schema: one JSON object, a JSON
array, or NDJSON. The whole body decodes in one call when it is valid; otherwise each
record is decoded on its own to name every bad one (index, field, reason)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from kappaflow.errors import MAX_PROBLEMS, InvalidEvents

_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


class Problem(msgspec.Struct):
    """What is wrong with one record: ``index`` in the body (None: the body itself)."""

    index: int | None
    field: str | None
    reason: str


class EventDecoder:
    def __init__(self, schema: type[msgspec.Struct]) -> None:
        self._one_or_many = msgspec.json.Decoder(schema | list[schema])  # type: ignore[valid-type]
        self._many = msgspec.json.Decoder(list[schema])  # type: ignore[valid-type]
        self._one = msgspec.json.Decoder(schema)
        self._raw = msgspec.json.Decoder(msgspec.Raw)
        self._raw_list = msgspec.json.Decoder(list[msgspec.Raw])

    def decode_json(self, body: bytes) -> list[Any]:
        """A JSON object or array of objects -> events; raises `InvalidEvents`."""
        try:
            decoded = self._one_or_many.decode(body)
            return decoded if isinstance(decoded, list) else [decoded]
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
        try:
            raw = self._raw.decode(body)
        except msgspec.DecodeError as error:
            raise InvalidEvents([Problem(None, None, f"body is not valid JSON: {error}")]) from None
        if body.lstrip().startswith(b"["):
            return self._each(self._raw_list.decode(body))
        return self._each([raw])

    def decode_ndjson(self, body: bytes) -> list[Any]:
        """One JSON object per line (blank lines ignored) -> events."""
        lines = [line for line in body.split(b"\n") if line.strip()]
        try:
            events = self._many.decode(b"[" + b",".join(lines) + b"]")
            if len(events) == len(lines):
                return events
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
        return self._each(lines)

    def _each(self, records: list[Any]) -> list[Any]:
        events, problems, invalid = [], [], 0
        for index, record in enumerate(records):
            try:
                events.append(self._one.decode(record))
            except (msgspec.DecodeError, UnicodeDecodeError) as error:
                invalid += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(_problem(index, error))
        if problems:
            raise InvalidEvents(problems, invalid)
        return events


def _problem(index: int, error: msgspec.DecodeError | UnicodeDecodeError) -> Problem:
    if isinstance(error, UnicodeDecodeError):  # msgspec checks UTF-8 where it reads strings
        return Problem(index, None, f"a string is not valid UTF-8 ({error.reason})")
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
