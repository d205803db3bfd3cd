"""What the HTTP services share: request bodies read to a limit, JSON responses and
error bodies, and the thread that runs their blocking calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import msgspec
from starlette.responses import Response
from starlette.types import Receive

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


class Blocking:
    """Runs the HTTP services' blocking calls (store queries, log offsets) in one thread
    of their own, one at a time: the event loop goes on answering ingest and
    ``/healthz`` however long the store takes (a store that is down is retried for
    seconds), and the store's one connection is never used by two threads at once."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kappaflow-blocking")

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in the thread, once the calls before it are done."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(call, *args))

    def close(self) -> None:
        """Wait for the call running, if any; those waiting are dropped."""
        self._thread.shutdown(cancel_futures=True)


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
