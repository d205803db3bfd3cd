"""A worker's HTTP endpoints, for a worker on its own (a container, a pod): ``/healthz``
(200 while the worker's loop goes round, 503 once it has been stuck for `STALL_S`) and
``/metrics`` (this process's Prometheus metrics), served by a thread of the worker
process on ``worker_port``. Under ``kappaflow up`` the server shows the workers'
metrics instead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import msgspec
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer

from kappaflow.metrics import exposition

STALL_S = 60.0
"""A loop that has not come round for this long is stuck: a worker's cycle (one batch of
at most ``batch_max_events``, or a wait for the store) takes seconds, not minutes."""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds; they are not worth a log line each."""


class WorkerEndpoints:
    """Serves ``/healthz`` and ``/metrics`` on ``host:port`` for the rest of the process
    (port 0: a free one, then in ``port``)."""

    def __init__(self, host: str, port: int) -> None:
        self.last_round = time.monotonic()
        self._server = make_server(host, port, self._app, ThreadingWSGIServer, _Quiet)
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
