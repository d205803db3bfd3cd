"""What the HTTP services share: request bodies read to a limit, JSON responses and
error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive

_encode = msgspec.json.Encoder().encode


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encode(content), status, headers, media_type="application/json")


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **details: Any
) -> Response:
    """An error answer: ``{"error": message, ...details}``."""
    return json_response({"error": message, **details}, status, headers)


class Disconnected(Exception):
    """The client went away before sending its whole body: nothing is written."""


async def read_body(headers: Mapping[bytes, bytes], receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (read no further)."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
