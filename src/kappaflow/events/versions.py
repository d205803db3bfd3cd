"""A stream's schema versions, and which changes of a schema need a new one.

A stream's ``schema`` is its current version; ``Stream.earlier`` lists the versions
before it, oldest first, each an `Earlier`: its schema and the function that turns one of
its events into an event of the next version (its upcaster). A record is read by the
schema of its version, then upcast version by version to the current one.

Schemas are compared as their JSON Schemas (as a schema registry compares them): the
one change a version may take in place, or a next version without an upcaster, is a new
optional field (one with a default). Removing a field, changing its type or default,
making it required or adding a required one needs a new version with an upcaster."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

_NONE = object()
_WORDING = frozenset({"title", "description", "examples"})
"""What a schema may say differently without changing what it accepts."""


@dataclass(frozen=True)
class Earlier:
    """An earlier version of a stream's schema: ``schema``, and ``upcast``, which turns
    one of its events into an event of the next version (None: its records decode as
    the next version's, which must then differ by new optional fields only)."""

    schema: type[msgspec.Struct]
    upcast: Callable[[Any], Any] | None = None


def json_schema(schema: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of ``schema``'s events, its references resolved."""
    document = msgspec.json.schema(schema)
    resolved = _resolved(document, document.get("$defs", {}), ())
    return msgspec.json.decode(msgspec.json.encode(resolved))  # as the registry reads it back


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What makes ``new`` (a `json_schema`) unable to read every record ``old`` accepted,
    each naming its field; empty if ``new`` adds optional fields at most."""
    if "properties" not in old or "properties" not in new:  # array_like: by position
        same = _text(old) == _text(new)
        return [] if same else [f"schema changed from {_text(old)} to {_text(new)}"]
    old_fields, new_fields = old["properties"], new["properties"]
    found = []
    if old.get("additionalProperties") is not False and new.get("additionalProperties") is False:
        found.append("unknown fields, which the log keeps as they came, are now refused "
                     "(forbid_unknown_fields)")  # fmt: skip
    for name, kind in old_fields.items():
        if name not in new_fields:
            found.append(f"field {name!r} was removed")
            continue
        was, now = dict(kind), dict(new_fields[name])
        old_default, new_default = was.pop("default", _NONE), now.pop("default", _NONE)
        if _text(was) != _text(now):
            found.append(f"field {name!r} changed type from {_text(was)} to {_text(now)}")
        elif old_default is not _NONE and new_default is _NONE:
            found.append(f"field {name!r} was made required")
        elif old_default is not _NONE and _text(old_default) != _text(new_default):
            found.append(f"field {name!r} changed its default from {_text(old_default)} "
                         f"to {_text(new_default)}")  # fmt: skip
    found += [
        f"field {name!r} was added as required (give it a default, or add a version with an "
        "upcaster)"
        for name in new_fields
        if name not in old_fields and "default" not in new_fields[name]
    ]
    return found


def _resolved(value: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """``value`` with each ``$ref`` replaced by what it names (a recursive one by its
    name) and without `_WORDING`."""
    if isinstance(value, list):
        return [_resolved(item, defs, seen) for item in value]
    if not isinstance(value, dict):
        return value
    if "$ref" in value:
        name = value["$ref"].rsplit("/", 1)[-1]
        return {"$ref": name} if name in seen else _resolved(defs[name], defs, (*seen, name))
    resolved = {
        key: _resolved(item, defs, seen)
        for key, item in value.items()
        if key not in {*_WORDING, "$defs", "properties"}
    }
    if "properties" in value:  # its keys are fields' names, whatever they say
        resolved["properties"] = {
            name: _resolved(kind, defs, seen) for name, kind in value["properties"].items()
        }
    return resolved


def _text(kind: Any) -> str:
    return json.dumps(kind, sort_keys=True, separators=(",", ":"))
