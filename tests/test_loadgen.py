"""The load generator against a small HTTP server on loopback that answers as ingest
may: a refusal to retry after a pause, then acceptance, and a 400 that is final."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import msgspec
import pytest

from kappaflow.apps.video.app import Heartbeat
from kappaflow.apps.video.sim import hb_ms
from kappaflow.client.loadgen import LoadGenerator, Summary, encoded


class Answering(BaseHTTPRequestHandler):
    """A handler that answers each post with a status, headers and an empty object."""

    protocol_version = "HTTP/1.1"

    def answer(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "content-length": "2"}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def serving(handler: type[Answering]) -> Iterator[str]:
    """A server with ``handler`` on loopback, while in the block; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Ingest(Answering):
    """Refuses each body's first post with 429 (or 503 for bodies of one event), then
    accepts it; refuses bodies with a negative position with 400."""

    seen: ClassVar[set[bytes]] = set()
    posts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.posts.append(self.path)
        events = msgspec.json.decode(body)
        if any(event["position_s"] < 0 for event in events):
            status, headers = 400, {}
        elif body not in self.seen:
            self.seen.add(body)
            status, headers = (503 if len(events) == 1 else 429), {"retry-after": "0"}
        else:
            status, headers = 202, {}
        self.answer(status, headers)


@pytest.fixture
def ingest() -> Iterator[str]:
    Ingest.seen, Ingest.posts = set(), []
    with serving(Ingest) as url:
        yield f"{url}/base"


def test_refusals_are_retried_after_the_pause_and_400s_are_final(ingest: str) -> None:
    good = [Heartbeat(f"u{n}", "v", float(n), 5_000 + n) for n in range(7)]
    bad = [Heartbeat("u9", "v", -1.0, 9_000)]
    batches = [
        *encoded(good[:6], 2, hb_ms),
        *encoded(good[6:], 1, hb_ms),
        *encoded([good[0], *bad], 2, hb_ms),
    ]
    summary = LoadGenerator(ingest, "heartbeats", 1_000, batches).run()
    assert (summary.sent, summary.accepted, summary.rejected, summary.failed) == (9, 7, 2, 0)
    assert (summary.requests, summary.retries) == (9, 4)
    assert summary.codes == {429: 3, 503: 1, 202: 4, 400: 1}
    assert summary.latest_ms == 5_006
    assert set(Ingest.posts) == {"/base/v1/streams/heartbeats/events"}


def test_a_run_without_a_duration_retries_whatever_the_run_before_had(ingest: str) -> None:
    """A run whose duration is over at once sends nothing (it drew one batch of three);
    the next run, without a duration, still retries each refusal until accepted."""
    events = [Heartbeat(f"u{n}", "v", float(n), 5_000 + n) for n in range(6)]
    generator = LoadGenerator(ingest, "heartbeats", 1_000, encoded(events, 2, hb_ms))
    assert generator.run(0.0).sent == 0
    summary = generator.run()
    assert (summary.sent, summary.accepted, summary.dropped, summary.retries) == (4, 4, 0, 2)


def test_an_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http:// URL"):
        LoadGenerator("https://example.com", "heartbeats", 1_000, [])


class Busy(Answering):
    """Refuses every post with 429, asking for a pause of 0.1 s."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.answer(429, {"retry-after": "0.1"})


def test_refusals_are_not_retried_past_the_duration() -> None:
    """A stack that refuses everything: the run ends about when its duration is up, and
    the batches still refused then are dropped."""
    with serving(Busy) as url:
        events = [Heartbeat(f"u{n}", "v", 0.0, 5_000 + n) for n in range(40)]
        generator = LoadGenerator(url, "heartbeats", 100, encoded(events, 2, hb_ms))
        runs: list[Summary] = []
        runner = threading.Thread(target=lambda: runs.append(generator.run(0.5)), daemon=True)
        runner.start()
        runner.join(10)
        assert not runner.is_alive(), "the run went on retrying past its duration"
    summary = runs[0]
    assert summary.seconds < 2.0
    assert summary.accepted == 0 and summary.sent > 0
    assert summary.dropped == summary.sent
    assert summary.retries > 0
