"""What the HTTP services share: JSON responses and error bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

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
