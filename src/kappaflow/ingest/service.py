"""The ingest service: ``POST /v1/streams/{stream}/events``. Validates a body of
events against the stream's schema and answers 202 only once every event is durably
in the log; any other answer means nothing of the request was written."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from kappaflow.app import App, Stream
from kappaflow.errors import InvalidEvents, KappaflowError, LogError
from kappaflow.events.validate import EventDecoder
from kappaflow.http import error, json_response
from kappaflow.ingest.appender import Appender
from kappaflow.ingest.committer import GroupCommitter
from kappaflow.log.base import Log
from kappaflow.metrics import EVENTS_INGESTED, REQUESTS_REJECTED, partition_lag
from kappaflow.settings import Settings
from kappaflow.store.base import Store

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
BACKLOG_CHECK_S = 0.5


class TooLarge(Exception):
    pass


class IngestService:
    def __init__(self, settings: Settings, apps: Sequence[App], log: Log, store: Store) -> None:
        self.settings = settings
        self.log = log
        self.store = store
        self.committer = GroupCommitter(log)
        self.streams: dict[str, tuple[App, Stream, Appender, EventDecoder]] = {}
        for app in apps:
            for stream in app.streams:
                appender = Appender(log, stream, settings.partitions)
                self.streams[stream.name] = (app, stream, appender, EventDecoder(stream.schema))
        self._backlog: dict[str, tuple[float, int]] = {}
        self.routes = [Route("/v1/streams/{stream}/events", self.post_events, methods=["POST"])]

    async def post_events(self, request: Request) -> Response:
        name = request.path_params["stream"]
        found = self.streams.get(name)
        if found is None:
            return self._refuse("(unknown)", "unknown_stream", error(
                404, f"unknown stream {name!r}", streams=sorted(self.streams)
            ))  # fmt: skip
        app, stream, appender, decoder = found
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in JSON_TYPES | NDJSON_TYPES:
            accepted = sorted(JSON_TYPES | NDJSON_TYPES)
            return self._refuse(name, "unsupported_media_type", error(
                415, f"content type {media_type or '(none)'!r} is not accepted", accepted=accepted
            ))  # fmt: skip
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        try:
            backlog = self._backlog_of(app, stream)
        except KappaflowError as failure:
            return self._refuse(name, "unavailable", error(503, str(failure), retry))
        if backlog > self.settings.ingest_max_backlog:
            return self._refuse(name, "backlog", error(
                429, f"backlog of {backlog:,} events is over the bound "
                f"{self.settings.ingest_max_backlog:,}; retry later", retry
            ))  # fmt: skip
        try:
            body = await self._body(request)
        except TooLarge:
            limit = self.settings.ingest_max_body_bytes
            return self._refuse(name, "too_large", error(
                413, f"body is over the limit of {limit:,} bytes; send smaller batches"
            ))  # fmt: skip
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            if media_type in NDJSON_TYPES:
                events = decoder.decode_ndjson(body)
            else:
                events = decoder.decode_json(body)
        except InvalidEvents as invalid:
            return self._refuse(name, "invalid", error(
                400, f"{len(invalid.problems)} invalid record(s); nothing was written",
                problems=invalid.problems,
            ))  # fmt: skip
        if not events:
            return json_response({"accepted": 0}, 202)
        try:
            await self.committer.append(name, appender.encode(events))
        except LogError as failure:
            return self._refuse(name, "unavailable", error(503, str(failure), retry))
        EVENTS_INGESTED.labels(name).inc(len(events))
        return json_response({"accepted": len(events)}, 202)

    def _refuse(self, stream: str, reason: str, response: Response) -> Response:
        REQUESTS_REJECTED.labels(stream, reason).inc()
        return response

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.ingest_max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _backlog_of(self, app: App, stream: Stream) -> int:
        """Events of the stream appended but not processed, checked at most every 0.5 s."""
        now = time.monotonic()
        checked_at, backlog = self._backlog.get(stream.name, (0.0, 0))
        if now - checked_at >= BACKLOG_CHECK_S:
            backlog = sum(lag for *_, lag in partition_lag([app], self.log, self.store, stream))
            self._backlog[stream.name] = (now, backlog)
        return backlog

    async def close(self) -> None:
        await self.committer.drain()
