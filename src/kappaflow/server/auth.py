"""The API keys' check in front of every HTTP route (`kappaflow.keys`): a request
without a valid ``Authorization: Bearer <secret>`` is answered 401, one whose key lacks
the route's scope 403, both counted on ``/metrics`` by reason. The scopes:
``/healthz``, ``/readyz`` and the dashboard's page (with its script and style sheet)
need none; posting events, ``ingest`` (of the stream); ``/metrics`` and ``/status``,
``metrics``; every other ``GET``, ``query``; every other ``POST`` (reference-data
uploads), ``admin``."""

from __future__ import annotations

from typing import NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from kappaflow.ingest.service import PREFIX, SUFFIX
from kappaflow.keys import KeyRing
from kappaflow.metrics import UNAUTHORIZED
from kappaflow.query.dashboard import PAGE
from kappaflow.server.hosts import PROBES
from kappaflow.server.http import error
from kappaflow.store.base import ApiKey
from kappaflow.store.base import Scope as KeyScope

OPEN = PROBES | frozenset(PAGE)
"""What answers without a key: the probes, and the dashboard's page (with its script and
style sheet), which holds no data and asks for a key when ``/status`` does."""
OPERATIONS = frozenset({"/metrics", "/status"})
REASONS = ("no_key", "unknown_key", "wrong_scope")
"""Why a request was refused: no bearer key, a key that is not one (or is revoked), a
key without the route's scope."""


def needed(method: str, path: str) -> tuple[KeyScope | None, str | None]:
    """The scope the route of ``method`` and ``path`` needs (None: none), and for
    ingest the stream."""
    if path in OPEN:
        return None, None
    if path in OPERATIONS:
        return "metrics", None
    if path.startswith(PREFIX) and path.endswith(SUFFIX) and method == "POST":
        return "ingest", path[len(PREFIX) : -len(SUFFIX)]
    return ("query" if method in ("GET", "HEAD") else "admin"), None


class Refusal(NamedTuple):
    """A request refused for its key: the status (401, 403), why (`REASONS`), what to
    tell its client."""

    status: int
    reason: str
    message: str


def check(ring: KeyRing, method: str, path: str, authorization: str) -> ApiKey | Refusal | None:
    """The key the header ``authorization`` gives, if the route of ``method`` and
    ``path`` needs one (`needed`) and the key has its scope; else why the request is
    refused (counted on ``/metrics``); None for a route that needs no key."""
    wanted, stream = needed(method, path)
    if wanted is None:
        return None
    kind, _, secret = authorization.partition(" ")
    if kind.lower() != "bearer" or not secret:
        found: ApiKey | Refusal = Refusal(
            401, "no_key", "an API key is needed: Authorization: Bearer <key>"
        )
    elif (key := ring.check(secret.strip())) is None:
        found = Refusal(401, "unknown_key", "the API key is not valid (unknown, or revoked)")
    elif not key.allows(wanted, stream):
        what = f"{wanted} of stream {stream}" if stream and wanted in key.scopes else wanted
        found = Refusal(403, "wrong_scope", f"key {key.id} ({key.name}) may not {what}")
    else:
        found = key
    if isinstance(found, Refusal):
        UNAUTHORIZED.labels(found.reason).inc()
    return found


def declare_refusals() -> None:
    """Show each reason's count on this process's ``/metrics`` from start."""
    for reason in REASONS:
        UNAUTHORIZED.labels(reason)


class Guard:
    """ASGI middleware: each HTTP request's key checked against its route's scope
    (`check`) before ``app`` sees it, which finds the key in ``scope["state"]["key"]``."""

    def __init__(self, app: ASGIApp, ring: KeyRing) -> None:
        self.app, self.ring = app, ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            found = check(self.ring, scope["method"], scope["path"], given)
            if isinstance(found, Refusal):
                headers = {"www-authenticate": "Bearer"} if found.status == 401 else None
                await error(found.status, found.message, headers)(scope, receive, send)
                return
            scope.setdefault("state", {})["key"] = found
        await self.app(scope, receive, send)
