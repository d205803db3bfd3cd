"""Deadlines for requests to arrive, which uvicorn's httptools protocol lacks: without
them a client sending a byte a second, or nothing at all, holds its connection for
good. A request's head (request line and headers) must be complete within the header
timeout of the connection opening or of the previous answer, and its body within the
body timeout of its head; otherwise the connection is answered 408 and closed (closed
only, when no byte of a request came). While the app works on a request that has
arrived, no deadline runs.

Deadlines are checked once a second on uvicorn's tick, so a request pays no timer of
its own (arming one costs more than a small request's whole decode)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeout_answer(message: str) -> bytes:
    body = msgspec.json.encode({"error": message})
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on the request arriving."""

    def __init__(
        self, *args: Any, header_timeout_s: float, body_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.timeouts = {"head": header_timeout_s, "body": body_timeout_s}
        self.waiting_for: Literal["head", "body"] | None = None
        """What of a request the connection waits for; None while it answers one."""
        self.deadline = 0.0
        """Loop time by which it must have arrived."""
        self.begun = False
        """Whether a byte of the head awaited has come."""

    def _wait_for(self, part: Literal["head", "body"] | None) -> None:
        self.waiting_for = part
        if part is not None:
            self.deadline = self.loop.time() + self.timeouts[part]
            self.begun = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.begun = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for("head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._wait_for("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # An app may answer before it has read the body: then the next head is due.
        self._wait_for("head" if self.cycle.response_complete else None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request started, or the body is still arriving.
        if self.waiting_for is None and self.cycle.response_complete:
            self._wait_for("head")

    def expire(self, now: float) -> None:
        """Close the connection if the request awaited is past its deadline, answering
        408 if the request has begun and has no answer yet."""
        part = self.waiting_for
        if part is None or now < self.deadline or self.transport.is_closing():
            return
        if part == "body":
            unanswered = not self.cycle.response_started
            self.cycle.disconnected = True  # the app reads a disconnect; an answer is dropped
        else:
            unanswered = self.begun
        if unanswered:
            message = f"the request {part} did not arrive within {self.timeouts[part]:g} s"
            self.transport.write(_timeout_answer(message))
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, closing the connections past their deadline once a second."""

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # a tick is 0.1 s
            now = asyncio.get_running_loop().time()
            for connection in list(self.server_state.connections):
                if isinstance(connection, DeadlineProtocol):
                    connection.expire(now)
        return await super().on_tick(counter)
