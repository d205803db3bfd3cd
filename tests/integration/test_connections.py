"""Connections a client holds without sending a request: slow heads and bodies, idle
and keep-alive connections, and the connection limit, against a real ``kappaflow
serve`` over real sockets."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest

from kappaflow.testing import wait_until

pytestmark = pytest.mark.integration
TIMEOUT_S = 1.0
ENV = {
    "KAPPAFLOW_PARTITIONS": "2",
    "KAPPAFLOW_HTTP_HEADER_TIMEOUT_S": str(TIMEOUT_S),
    "KAPPAFLOW_HTTP_BODY_TIMEOUT_S": str(TIMEOUT_S),
    "KAPPAFLOW_HTTP_KEEP_ALIVE_S": str(TIMEOUT_S),
    "KAPPAFLOW_HTTP_MAX_CONNECTIONS": "3",
}
CLOSED_WITHIN_S = TIMEOUT_S + 3  # deadlines are checked once a second
HEAD = b"POST /v1/streams/heartbeats/events HTTP/1.1\r\nhost: localhost\r\n"
BODY = msgspec.json.encode({"user_id": "u", "video_id": "v", "position_s": 1, "ts": 1000})


@pytest.fixture
def server(tmp_path: Path, kappaflow: Callable[..., AbstractContextManager]) -> Iterator[str]:
    """The ``host:port`` of a server with 1-second deadlines and at most 3 connections."""
    arguments = ("serve", "--role", "ingest", "--role", "query", "--data-dir", str(tmp_path))
    with kappaflow(*arguments, env=ENV) as running:
        yield urlsplit(running.url).netloc


def connect(server: str) -> socket.socket:
    host, port = server.split(":")
    return socket.create_connection((host, int(port)), timeout=CLOSED_WITHIN_S)


def until_closed(connection: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def trickle(connection: socket.socket, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` a byte every 0.1 s until the server answers; what it sent until it
    closed the connection, and after how many seconds."""
    started = time.monotonic()
    connection.settimeout(0.1)
    for byte in data:
        connection.sendall(bytes([byte]))
        try:
            first = connection.recv(65536)
        except TimeoutError:
            continue
        connection.settimeout(CLOSED_WITHIN_S)
        return first + until_closed(connection), time.monotonic() - started
    raise AssertionError(f"all of {data!r} sent and no answer")


def assert_timed_out(answer: bytes, part: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head
    error = msgspec.json.decode(body)["error"]
    assert error == f"the request {part} did not arrive within {TIMEOUT_S:g} s"


def test_a_head_sent_a_byte_at_a_time_is_answered_408_and_closed(server: str) -> None:
    with connect(server) as connection:
        answer, seconds = trickle(connection, HEAD + b"x-padding: " + b"a" * 1_000)
    assert_timed_out(answer, "head")
    assert TIMEOUT_S <= seconds < CLOSED_WITHIN_S


def test_a_body_sent_a_byte_at_a_time_is_answered_408_and_closed(server: str) -> None:
    head = HEAD + b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    with connect(server) as connection:
        connection.sendall(head)
        answer, seconds = trickle(connection, BODY + b" " * (1_000 - len(BODY)))
    assert_timed_out(answer, "body")
    assert TIMEOUT_S <= seconds < CLOSED_WITHIN_S


def test_idle_connections_are_closed_new_and_kept_alive(server: str) -> None:
    with connect(server) as connection:
        started = time.monotonic()
        assert until_closed(connection) == b"", "closed, with no answer to no request"
        assert TIMEOUT_S <= time.monotonic() - started < CLOSED_WITHIN_S
    client = http.client.HTTPConnection(server, timeout=CLOSED_WITHIN_S)
    client.request("GET", "/healthz")
    assert client.getresponse().read() == b'{"status":"ok"}'
    assert client.sock.recv(1) == b"", "closed after the keep-alive time"
    client.close()


def test_connections_beyond_the_limit_are_answered_503(server: str) -> None:
    with ExitStack() as held:
        for _ in range(3):
            held.enter_context(connect(server))
        client = http.client.HTTPConnection(server, timeout=CLOSED_WITHIN_S)
        client.request("GET", "/healthz")
        refused = client.getresponse()
        assert refused.status == 503
        assert refused.getheader("connection") == "close"
        client.close()

    def served() -> bool:
        client = http.client.HTTPConnection(server, timeout=CLOSED_WITHIN_S)
        client.request("POST", "/v1/streams/heartbeats/events", BODY,
                       {"content-type": "application/json"})  # fmt: skip
        status = client.getresponse().status
        client.close()
        return status == 202

    wait_until(served, 10, "a request served once the held connections closed", 0.1)
