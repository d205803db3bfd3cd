"""HTTPS (`kappaflow.server.tls`): the services and a worker's endpoints serve it with
the settings' certificate, which a client trusting its authority accepts and one
trusting only the system's refuses; plain HTTP gets no answer from them; settings that
are not a certificate and its key are refused, naming them."""

from __future__ import annotations

import socket
import time
from contextlib import closing

import httpx
import pytest

from kappaflow.errors import SettingsError
from kappaflow.keys import KeyRing, create
from kappaflow.server.serve import server
from kappaflow.server.tls import client_context, server_context
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream import endpoints
from kappaflow.stream.endpoints import WorkerEndpoints
from kappaflow.testing import wait_until
from kappaflow.testing.services import serving


def test_the_services_serve_https_with_the_settings_certificate(
    settings: Settings, certificate: dict[str, str]
) -> None:
    settings = settings.replace(apps=("video",), **certificate)
    beat = {"user_id": "u", "video_id": "v", "position_s": 1.0, "ts": int(time.time() * 1000)}
    with serving(settings) as client:
        assert client.base_url.scheme == "https"
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post("/v1/streams/heartbeats/events", json=[beat]).status_code == 202
        port = client.base_url.port
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}/healthz")  # the system's authorities only
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")


def test_a_workers_endpoints_serve_https_and_ask_for_a_metrics_key(
    settings: Settings, certificate: dict[str, str]
) -> None:
    settings = settings.replace(**certificate)
    with closing(open_store(settings)) as store:
        metrics = create(store, "scraper", ["metrics"])[1]
        query = create(store, "reader", ["query"])[1]
        ring = KeyRing(store.api_keys)
        ring.refresh()
    endpoints = WorkerEndpoints("127.0.0.1", 0, server_context(settings), ring)
    url = f"https://127.0.0.1:{endpoints.port}"
    with httpx.Client(base_url=url, verify=client_context(settings), timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"authorization": f"Bearer {query}"})
        assert wrong.status_code == 403 and "may not metrics" in wrong.json()["detail"]
        right = client.get("/metrics", headers={"authorization": f"Bearer {metrics}"})
        assert right.status_code == 200 and "kappaflow_requests_unauthorized_total" in right.text


def test_settings_that_are_not_a_certificate_and_its_key_are_refused_naming_them(
    settings: Settings, certificate: dict[str, str]
) -> None:
    cert, key, ca = (certificate[name] for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"))
    refused = {
        "go together": {"tls_cert_file": cert},
        "are not a PEM certificate and its private key": {
            "tls_cert_file": cert,
            "tls_key_file": ca,
        },
        "cannot read KAPPAFLOW_TLS_CERT_FILE": {"tls_cert_file": "/nowhere", "tls_key_file": key},
    }
    for message, given in refused.items():
        with pytest.raises(SettingsError, match=message):
            server(settings.replace(**given), ["ingest"])
    with pytest.raises(SettingsError, match=r"KAPPAFLOW_TLS_CA_FILE .* is not a readable PEM"):
        client_context(settings.replace(tls_ca_file=key))


def test_a_workers_endpoints_let_go_of_a_connection_that_sends_nothing(
    settings: Settings, certificate: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(endpoints._Quiet, "timeout", 0.5)
    served = WorkerEndpoints("127.0.0.1", 0, server_context(settings.replace(**certificate)))
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as silent:
        url = f"https://127.0.0.1:{served.port}/healthz"
        assert httpx.get(url, verify=client_context(settings.replace(**certificate))).is_success
        started = time.monotonic()
        assert silent.recv(1) == b"", "closed by the server"
        assert time.monotonic() - started < 5
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{served.port}/healthz")
    wait_until(lambda: "connection from 127.0.0.1 failed" in caplog.text, 5, "one line logged")
