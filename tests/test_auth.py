"""The HTTP services with authentication on (`kappaflow.server.auth`): every route of the
OpenAPI document, with no key, a malformed one, an unknown one, a revoked one, a key of
every other scope and a key of its own scope, as the document's security says; a
revocation seen within `RECHECK_S`; the refusals counted on /metrics; and when
authentication is on by default."""

from __future__ import annotations

import re
import time
from contextlib import closing

import httpx
import pytest
from openapi_spec_validator import validate

from kappaflow.keys import RECHECK_S, create, new_secret, revoke
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing import wait_until
from kappaflow.testing.services import serving

OPEN = {"/healthz", "/readyz", "/", "/dashboard.js", "/dashboard.css"}
OPERATIONS = {"/metrics", "/status"}


def scope_of(method: str, path: str) -> str | None:
    """The scope docs/security.md gives each route."""
    if path in OPEN:
        return None
    if path in OPERATIONS:
        return "metrics"
    if re.fullmatch(r"/v1/streams/[^/]+/events", path):
        return "ingest"
    return "query" if method == "GET" else "admin"


def routes(document: dict) -> list[tuple[str, str]]:
    """(method, path) of every route of the OpenAPI document and the dashboard, path
    parameters filled in."""
    found = [("GET", "/")]
    for template, methods in document["paths"].items():
        path = re.sub(r"\{[^}]+\}", "x", template).replace("/streams/x/", "/streams/clicks/")
        found += [(method.upper(), path) for method in methods if method in ("get", "post")]
    return found


def test_every_route_asks_for_a_key_of_its_scope(settings: Settings) -> None:
    settings = settings.replace(apps=("video", "clicks"), auth="on", admin_key=new_secret())
    with closing(open_store(settings)) as store:
        keys = {scope: create(store, scope, [scope])[1]
                for scope in ("ingest", "query", "admin", "metrics")}  # fmt: skip
        others = {scope: create(store, f"all but {scope}", [s for s in keys if s != scope])[1]
                  for scope in keys}  # fmt: skip
        gone, secret = create(store, "revoked", list(keys))
        revoke(store, gone.id)
        clicks_only = create(store, "clicks only", ["ingest"], ["clicks"])[1]
    with serving(settings) as client:
        document = client.get("/openapi.json", headers=bearer(settings.admin_key)).json()
        checked = routes(document)
        assert len(checked) > 10 and ("POST", "/v1/catalog") in checked
        validate(document)
        assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        for template, operations in document["paths"].items():
            for method, operation in operations.items():
                wanted = scope_of(method.upper(), template)
                assert operation["security"] == ([{"apiKey": [wanted]}] if wanted else [])
                assert ("401" in operation["responses"]) == (wanted is not None)
        for method, path in checked:
            wanted = scope_of(method, path)
            no_key = client.request(method, path)
            if wanted is None:
                assert no_key.status_code == 200, (method, path)
                continue
            what = f"{method} {path}"
            assert no_key.status_code == 401, what
            assert no_key.headers["www-authenticate"] == "Bearer"
            assert no_key.json() == {"error": "an API key is needed: Authorization: Bearer <key>"}
            for given in ("Basic abc", f"Bearer {keys[wanted]}x", f"Bearer {secret}"):
                refused = client.request(method, path, headers={"authorization": given})
                assert refused.status_code == 401, (what, given)
            wrong = client.request(method, path, headers=bearer(others[wanted]))
            assert wrong.status_code == 403, what
            assert f"may not {wanted}" in wrong.json()["error"]
            for right in (keys[wanted], settings.admin_key):
                answer = client.request(method, path, headers=bearer(right))
                assert answer.status_code not in (401, 403), (what, answer.text)
        heartbeats = client.post("/v1/streams/heartbeats/events", json=[],
                                 headers=bearer(clicks_only))  # fmt: skip
        assert heartbeats.status_code == 403
        assert heartbeats.json()["error"].endswith("may not ingest of stream heartbeats")
        assert client.post("/v1/streams/clicks/events", json=[],
                           headers=bearer(clicks_only)).status_code != 403  # fmt: skip
        metrics = client.get("/metrics", headers=bearer(keys["metrics"])).text
        for reason in ("no_key", "unknown_key", "wrong_scope"):
            count = re.search(rf'kappaflow_requests_unauthorized_total{{reason="{reason}"}} (\S+)',
                              metrics)  # fmt: skip
            assert count is not None and float(count[1]) > 0, reason

        with closing(open_store(settings)) as store:  # created and revoked as it runs
            key, short = create(store, "short-lived", ["query"])
            wait_until(lambda: answers(client, short) == 200, RECHECK_S + 5, "the new key taken")
            revoke(store, key.id)
        revoked_at = time.monotonic()
        wait_until(lambda: answers(client, short) == 401, RECHECK_S + 5, "the key refused")
        assert time.monotonic() - revoked_at < RECHECK_S + 1


def answers(client: httpx.Client, secret: str) -> int:
    return client.get("/v1/dead-letters", headers=bearer(secret)).status_code


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.mark.parametrize(
    ("host", "auth", "on"),
    [("127.0.0.1", "auto", False), ("localhost", "auto", False), ("0.0.0.0", "auto", True),
     ("10.0.0.7", "auto", True), ("127.0.0.1", "on", True), ("0.0.0.0", "off", False)],
)  # fmt: skip
def test_authentication_is_on_unless_the_services_listen_on_a_loopback_address_only(
    host: str, auth: str, on: bool
) -> None:
    assert Settings().replace(host=host, auth=auth).auth_on is on
