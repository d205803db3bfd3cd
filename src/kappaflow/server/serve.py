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
from collections.abc import AsyncIterator, Collection
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from kappaflow.app import load_apps
from kappaflow.errors import KappaflowError
from kappaflow.ingest.service import IngestService
from kappaflow.log import open_log
from kappaflow.metrics import LagCollector, declare, exposition
from kappaflow.query.dashboard import PAGE, status
from kappaflow.query.service import QueryService
from kappaflow.server.connections import DeadlineProtocol, Server
from kappaflow.server.http import Blocking, error, json_response
from kappaflow.server.openapi import document
from kappaflow.settings import Settings
from kappaflow.store import open_store

ROLES = ("ingest", "query")
log = logging.getLogger("kappaflow.server.serve")


def build(settings: Settings, roles: Collection[str]) -> ASGIApp:
    apps = load_apps(settings)
    the_log = open_log(settings, writer="ingest" in roles)
    store = open_store(settings)
    for app in apps:
        store.create_tables(app.all_tables)
        for stream in app.streams:
            the_log.create_topic(stream.name, settings.partitions)
    blocking = Blocking()
    ingest = IngestService(settings, apps, the_log) if "ingest" in roles else None
    query = QueryService(settings, apps, store, blocking) if "query" in roles else None
    lag = LagCollector(apps, the_log, store)
    declare(apps)
    openapi = json_response(document(apps, roles))

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    def check_ready() -> None:
        """The log answers; so does the store, if queries are served (ingest needs only
        the log: a store outage must not take it out of service)."""
        for app in apps:
            for stream in app.streams:
                the_log.end_offsets(stream.name)
        if query is not None:
            store.query("SELECT 1")

    async def readyz(request: Request) -> Response:
        try:
            await blocking.run(check_ready)
        except KappaflowError as failure:
            return error(503, f"not ready: {failure}")
        return json_response({"status": "ready"})

    async def metrics(request: Request) -> Response:
        text = await blocking.run(exposition, lag)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def openapi_json(request: Request) -> Response:
        return openapi

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def status_json(request: Request) -> Response:
        try:
            return json_response(await blocking.run(status, apps, the_log, store))
        except KappaflowError as failure:
            return error(503, f"status unknown: {failure}")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        log.warning("%s serving on http://%s:%d", "+".join(roles), settings.host, settings.port)
        try:
            yield
        finally:
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
        Route("/", dashboard),
        Route("/status", status_json),
        *(query.routes if query else []),
    ]
    framework = Starlette(routes=routes, lifespan=lifespan,
                          exception_handlers={HTTPException: http_error})  # fmt: skip
    if ingest is None:
        return framework

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ingest.handles(scope["path"]):
            await ingest(scope, receive, send)
        else:
            await framework(scope, receive, send)

    return app


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
    )
    return Server(config)
