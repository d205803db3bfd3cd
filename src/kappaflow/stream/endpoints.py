"""A worker's HTTP endpoints, for a worker on its own (a container, a pod): ``/healthz``
(200 while the worker's loop goes round, 503 once it has been stuck for `STALL_S`) and
``/metrics`` (this process's Prometheus metrics; with authentication on, for a key of
scope ``metrics``, as the server's), served by a thread of the worker process on
``worker_port``, over HTTPS with the server's certificate if it has one. Under
``kappaflow up`` the server shows the workers' metrics instead."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import msgspec
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer

from kappaflow.keys import KeyRing
from kappaflow.metrics import exposition
from kappaflow.server.auth import Refusal, check, declare_refusals

log = logging.getLogger("kappaflow.worker")
STALL_S = 60.0
"""A loop that has not come round for this long is stuck: a worker's cycle (one batch of
at most ``batch_max_events``, or a wait for the store) takes seconds, not minutes."""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Quiet(WSGIRequestHandler):
    timeout = 10
    """Seconds a connection may take to send its TLS handshake and request: a client
    that sends nothing lets go of its thread then."""

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds; they are not worth a log line each."""


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (plain HTTP to HTTPS, a scanner, a timeout): one line."""
        failure = sys.exc_info()[1]
        log.warning("worker endpoints: connection from %s failed: %s", client_address[0], failure)


class WorkerEndpoints:
    """Serves ``/healthz`` and ``/metrics`` on ``host:port`` for the rest of the process
    (port 0: a free one, then in ``port``), over ``tls`` if given, asking for keys of
    ``ring`` if given."""

    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, ring: KeyRing | None = None
    ) -> None:
        self.last_round = time.monotonic()
        self.ring = ring
        declare_refusals()
        self._server = make_server(host, port, self._app, _Server, _Quiet)
        if tls is not None:
            # The handshake in the thread of its request, not in the one that accepts them.
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self._server.server_port
        threading.Thread(
            target=self._server.serve_forever, name="kappaflow-endpoints", daemon=True
        ).start()

    def watching(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        """``should_stop``, noting each call as a round of the loop that asks it: the
        worker's loop asks between batches and while it waits, so a loop that stops
        asking is stuck."""

        def asked() -> bool:
            self.last_round = time.monotonic()
            return should_stop()

        return asked

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path not in ("/healthz", "/metrics"):
            return _answer(start_response, "404 Not Found", {"detail": f"no route {path}"})
        if method not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", {"detail": "GET only"})
        if self.ring is not None:
            given = environ.get("HTTP_AUTHORIZATION", "")
            found = check(self.ring, method, path, given)
            if isinstance(found, Refusal):
                status = "401 Unauthorized" if found.status == 401 else "403 Forbidden"
                return _answer(start_response, status, {"detail": found.message})
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [exposition(None)]
        since = time.monotonic() - self.last_round
        if since > STALL_S:
            detail = f"the worker's loop has not come round for {since:.0f} s"
            return _answer(start_response, "503 Service Unavailable", {"detail": detail})
        return _answer(start_response, "200 OK", {"status": "ok"})


def _answer(start_response: StartResponse, status: str, body: dict[str, str]) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [msgspec.json.encode(body)]
