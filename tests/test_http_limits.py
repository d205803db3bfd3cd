"""What every request passes before its route (`kappaflow.server.serve.fronted`): the
Host check (`kappaflow.server.hosts`), CORS for exact origins only, and the ingest rate
limit per API key or address (`kappaflow.ingest.rate`), on a real server."""

from __future__ import annotations

import time
from contextlib import closing

import pytest

from kappaflow.errors import SettingsError
from kappaflow.ingest.rate import RateLimit
from kappaflow.keys import create
from kappaflow.server.hosts import host_name, matches
from kappaflow.server.serve import server
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing.services import serving

EVENTS = "/v1/streams/heartbeats/events"
APP = "https://app.example.com"


def beat() -> list[dict]:
    return [{"user_id": "u", "video_id": "v", "position_s": 1.0, "ts": int(time.time() * 1000)}]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def test_services_on_loopback_answer_loopback_names_only_and_probes_any(
    settings: Settings,
) -> None:
    with serving(settings.replace(apps=("video",))) as client:
        port = client.base_url.port
        assert client.get("/openapi.json", headers={"host": f"localhost:{port}"}).is_success
        assert client.get("/openapi.json", headers={"host": f"[::1]:{port}"}).is_success
        refused = client.get("/openapi.json", headers={"host": "rebound.example:80"})
        assert refused.status_code == 400
        assert "'rebound.example:80' is not one these services answer to" in refused.json()["error"]
        assert client.post(EVENTS, json=beat(), headers={"host": "x.example"}).status_code == 400
        assert client.get("/healthz", headers={"host": "10.1.2.3:8000"}).status_code == 200


def test_the_allowed_hosts_setting_names_the_hosts_and_their_subdomains() -> None:
    assert [host_name(given) for given in ("a.example.com:443", "[::1]:80", "::1", "b")] == [
        "a.example.com", "::1", "::1", "b"]  # fmt: skip
    patterns = ["*.example.com", "kappaflow.internal"]
    assert matches("api.example.com", patterns) and matches("Kappaflow.Internal.", patterns)
    assert not matches("example.com.evil", patterns) and not matches("example.com", patterns)


def test_ingest_requests_over_a_keys_rate_are_answered_429_with_retry_after(
    settings: Settings,
) -> None:
    settings = settings.replace(apps=("video",), auth="on", ingest_rate_limit="3/minute")
    with closing(open_store(settings)) as store:
        first, second = (create(store, name, ["ingest"])[1] for name in ("first", "second"))
        metrics = create(store, "scraper", ["metrics"])[1]
    with serving(settings) as client:
        answers = [client.post(EVENTS, json=beat(), headers=bearer(first)) for _ in range(4)]
        assert [answer.status_code for answer in answers] == [202, 202, 202, 429]
        assert 1 <= int(answers[3].headers["retry-after"]) <= 60
        assert "is over the rate limit (3 per 1 minute)" in answers[3].json()["error"]
        assert client.post(EVENTS, json=beat(), headers=bearer(second)).status_code == 202
        counted = client.get("/metrics", headers=bearer(metrics)).text
    assert 'kappaflow_ingest_rejected_total{reason="rate_limited",stream="heartbeats"} 1.0' in (
        counted
    )


def test_without_keys_the_rate_is_each_addresss(settings: Settings) -> None:
    settings = settings.replace(apps=("video",), ingest_rate_limit="1/minute")
    with serving(settings) as client:
        assert client.post(EVENTS, json=beat()).status_code == 202
        refused = client.post(EVENTS, json=beat())
        assert refused.status_code == 429 and "address 127.0.0.1" in refused.json()["error"]
        assert client.get("/openapi.json").is_success, "only ingest is limited"
    with pytest.raises(SettingsError, match="KAPPAFLOW_INGEST_RATE_LIMIT: 'fast'"):
        server(settings.replace(ingest_rate_limit="fast"), ["ingest"])


def test_no_page_of_another_origin_may_call_the_services_unless_its_origin_is_given(
    settings: Settings,
) -> None:
    settings = settings.replace(apps=("video",))
    preflight = {"origin": APP, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}  # fmt: skip
    with serving(settings) as client:
        answer = client.get("/openapi.json", headers={"origin": APP})
        assert "access-control-allow-origin" not in answer.headers
        assert (
            "access-control-allow-origin" not in client.options(EVENTS, headers=preflight).headers
        )
    with serving(settings.replace(cors_origins=(APP,))) as client:
        allowed = client.options(EVENTS, headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == APP
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options(EVENTS, headers={**preflight, "origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        answer = client.get("/openapi.json", headers={"origin": APP})
        assert answer.headers["access-control-allow-origin"] == APP
    for wrong in ("*", "app.example.com", "https://*.example.com"):
        with pytest.raises(SettingsError, match="KAPPAFLOW_CORS_ORIGINS"):
            server(settings.replace(cors_origins=(wrong,)), ["query"])


def test_a_refused_request_counts_against_no_rate_and_waits_for_each_it_is_over() -> None:
    rate = RateLimit("3/hour;2/minute")
    assert [rate.wait_s("key a") for _ in range(4)] == [None, None, 60, 60]
    assert rate.wait_s("key b") is None, "each client its own"
    hourly = RateLimit("1/hour;5/minute")
    assert hourly.wait_s("key a") is None and 3590 <= (hourly.wait_s("key a") or 0) <= 3600
