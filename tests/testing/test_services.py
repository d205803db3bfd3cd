"""The HTTP services served in a thread of the test's process."""

from __future__ import annotations

import socket

from kappaflow.settings import Settings
from kappaflow.testing.services import serving


def test_the_services_answer_over_http_until_the_block_ends(settings: Settings) -> None:
    with serving(settings, ("query",)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post("/v1/streams/clicks/events", json={}).status_code == 404
        port = client.base_url.port
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
