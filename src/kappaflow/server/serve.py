"""One ASGI application serving the ingest and/or query roles, with the endpoints
every role has (``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, and the
dashboard at ``/`` with its ``/status``), run on uvicorn with deadlines for requests
to arrive (`kappaflow.server.connections`) and a bound on open connections. Whatever reads the
store or the log's offsets runs in a thread of its own (`Blocking`), so that a slow or
unreachable store holds up neither ingest nor ``/healthz``. On SIGTERM or Ctrl-C
uvicorn stops accepting, answers the requests in flight (each either 202 and durable,
or refused), then the log and store close."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from kappaflow.app import App, load_apps
from kappaflow.deployments import current
from kappaflow.errors import KappaflowError, SettingsError, StoreUnavailable
from kappaflow.ingest.service import VERSION_HEADER, IngestService
from kappaflow.keys import KeyRing, watch
from kappaflow.log import open_log
from kappaflow.log.base import Log
from kappaflow.metrics import LagCollector, declare, exposition
from kappaflow.query.dashboard import HEADERS, PAGE, Pace, status
from kappaflow.query.service import QueryService
from kappaflow.server.auth import Guard, declare_refusals
from kappaflow.server.connections import DeadlineProtocol, Server
from kappaflow.server.hosts import AllowedHosts
from kappaflow.server.http import Blocking, error, json_response
from kappaflow.server.openapi import document
from kappaflow.server.tls import server_context
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import Store

ROLES = ("ingest", "query")
ORIGIN = re.compile(r"https?://[^/*\s]+")
REREAD_S = 1.0
"""How often a server reads which app versions are live, at most: a promotion reaches
its queries within this."""
log = logging.getLogger("kappaflow.server.serve")


def build(settings: Settings, roles: Collection[str]) -> ASGIApp:
    """The application of ``roles``, which closes the log and store it opens when its
    lifespan ends; if it cannot be built, nothing is left open."""
    for origin in settings.cors_origins:  # refused before anything opens
        if not ORIGIN.fullmatch(origin):
            raise SettingsError(f"KAPPAFLOW_CORS_ORIGINS: {origin!r} is not an origin such as "
                                "https://app.example.com (exactly; no *)")  # fmt: skip
    apps = load_apps(settings)
    with contextlib.ExitStack() as opened:
        the_log = opened.enter_context(
            contextlib.closing(open_log(settings, writer="ingest" in roles))
        )
        store = opened.enter_context(contextlib.closing(open_store(settings)))
        built = _build(settings, roles, apps, the_log, store)
        opened.pop_all()
        return built


def _build(
    settings: Settings, roles: Collection[str], apps: Sequence[App], the_log: Log, store: Store
) -> ASGIApp:
    for app in apps:
        for stream in app.streams:
            the_log.create_topic(stream.name, settings.partitions)
    blocking = Blocking()
    versions = ServedVersions(settings, apps, the_log, store)
    ingest = IngestService(settings, apps, the_log) if "ingest" in roles else None
    lag = LagCollector(versions.running, the_log, store)
    declare(apps)
    declare_refusals()
    pace = Pace()

    def queries(served: Sequence[App]) -> tuple[Router, Response]:
        """The query routes of the live versions ``served``, and the OpenAPI document."""
        routes = QueryService(settings, served, store, blocking).routes if "query" in roles else []
        return Router(routes), json_response(document(served, roles, settings.auth_on))

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    def check_ready() -> None:
        """The log answers; so does the store, if queries are served (ingest needs only
        the log: a store outage must not take it out of service)."""
        for app in apps:
            for stream in app.streams:
                the_log.end_offsets(stream.name)
        if "query" in roles:
            store.query("SELECT 1")

    async def readyz(request: Request) -> Response:
        try:
            await blocking.run(check_ready)
        except KappaflowError as failure:
            return error(503, f"not ready: {failure}")
        return json_response({"status": "ready"})

    async def metrics(request: Request) -> Response:
        await versions.fresh(blocking)
        text = await blocking.run(exposition, lag)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def openapi_json(request: Request) -> Response:
        return (await versions.served(blocking, queries))[1]

    async def dashboard(request: Request) -> Response:
        kind, body = PAGE[request.url.path]
        return Response(body, media_type=kind, headers=HEADERS)

    async def status_json(request: Request) -> Response:
        await versions.fresh(blocking)
        try:
            found = await blocking.run(status, versions.running, the_log, store, pace)
            return json_response(found)
        except KappaflowError as failure:
            return error(503, f"status unknown: {failure}")

    async def live_queries(scope: Scope, receive: Receive, send: Send) -> None:
        """A query (or upload) of the live versions as they are when it arrives."""
        router, _ = await versions.served(blocking, queries)
        await router(scope, receive, send)

    ring, reading = watch(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        log.warning("%s serving on %s", "+".join(roles), settings.url)
        try:
            yield
        finally:
            reading.set()
            if ingest is not None:
                await ingest.close()
            blocking.close()
            the_log.close()
            store.close()
            log.warning("%s stopped; every acknowledged event is in the log", "+".join(roles))

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        *(Route(path, dashboard) for path in PAGE),
        Route("/status", status_json),
    ]
    framework = Starlette(routes=routes, lifespan=lifespan,
                          exception_handlers={HTTPException: http_error})  # fmt: skip
    framework.router.default = live_queries  # what no route above takes
    if ingest is None:
        return fronted(settings, framework, ring)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ingest.handles(scope["path"]):
            await ingest(scope, receive, send)
        else:
            await framework(scope, receive, send)

    return fronted(settings, app, ring)


def fronted(settings: Settings, app: ASGIApp, ring: KeyRing | None) -> ASGIApp:
    """``app`` behind the checks each request passes first, in this order: its Host
    name (`AllowedHosts`), its origin if a browser's page of another sent it (CORS, whose
    preflight requests are answered here), its API key (`Guard`, with ``ring``)."""
    if ring is not None:
        app = Guard(app, ring)
    if settings.cors_origins:
        app = CORSMiddleware(app, allow_origins=list(settings.cors_origins),
                             allow_methods=["GET", "POST"], max_age=600,
                             allow_headers=["authorization", "content-type",
                                            VERSION_HEADER.decode()])  # fmt: skip
    if settings.answered_hosts:
        app = AllowedHosts(app, settings.answered_hosts)
    return app


class ServedVersions:
    """The app versions a server knows (`kappaflow.deployments`): those running, for
    the status and metrics, and each app's live one, whose queries it serves. Read from
    the store at most every `REREAD_S`; while it cannot be read, as they were."""

    def __init__(self, settings: Settings, apps: Sequence[App], the_log: Log, store: Store) -> None:
        self.settings, self.apps, self.log, self.store = settings, apps, the_log, store
        self.running: list[App] = list(apps)
        """Changed in place, for the metrics' collector that holds it."""
        self.live: list[App] = list(apps)
        self._built: list[App] = []
        """The versions read last (their tables created)."""
        self._read_at = -REREAD_S
        self._served: dict[tuple[str, ...], tuple[Router, Response]] = {}
        with contextlib.suppress(StoreUnavailable):  # a store out at start: the settings'
            self._read()

    def _read(self) -> None:
        found, self.live = current(self.settings, self.apps, self.store, self.log, self._built)
        self.running[:] = self._built = found

    async def fresh(self, blocking: Blocking) -> None:
        """Read the versions again if the last read is `REREAD_S` old."""
        if time.monotonic() - self._read_at >= REREAD_S:
            self._read_at = time.monotonic()
            try:
                await blocking.run(self._read)
            except KappaflowError as failure:
                log.warning("cannot read the app versions (%s); serving those known", failure)

    async def served(
        self, blocking: Blocking, build: Callable[[Sequence[App]], tuple[Router, Response]]
    ) -> tuple[Router, Response]:
        """What ``build`` makes of the live versions, read afresh if due (once for each
        set of them)."""
        await self.fresh(blocking)
        served = self.live
        key = tuple(app.ref for app in served)
        if key not in self._served:
            self._served[key] = build(served)
        return self._served[key]


async def http_error(request: Request, failure: Exception) -> Response:
    """Starlette's own answers (no such route: 404, another method: 405) as JSON errors,
    like every other answer."""
    assert isinstance(failure, HTTPException)
    message = f"{request.method} {request.url.path}: {failure.detail.lower()}"
    return error(failure.status_code, message, dict(failure.headers or {}))


def serve(settings: Settings, roles: Collection[str]) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    server(settings, roles).run()


def server(settings: Settings, roles: Collection[str]) -> Server:
    """The server of ``roles`` on the settings' host and port, not yet started."""
    tls = server_context(settings) is not None  # checked here, before uvicorn reads them
    protocol = partial(
        DeadlineProtocol,
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
    )
    config = uvicorn.Config(
        build(settings, roles),
        host=settings.host,
        port=settings.port,
        http=protocol,  # type: ignore[arg-type]  # a factory of the protocol, as uvicorn calls it
        log_level="warning",
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_s,  # type: ignore[arg-type]  # any number
        # uvicorn answers 503 once the connections, the new one included, reach the limit.
        limit_concurrency=settings.http_max_connections + 1,
        timeout_graceful_shutdown=30,
        ssl_certfile=settings.tls_cert_file if tls else None,
        ssl_keyfile=settings.tls_key_file if tls else None,
    )
    return Server(config)
