"""The ingest service: ``POST /v1/streams/{stream}/events``. Validates a body of
events against a version of the stream's schema, appends them as they came, and answers
202 only once every event is durably in the log; any other answer means nothing of the
request was written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from kappaflow.app import App, Stream
from kappaflow.errors import InvalidEvents, KappaflowError, LogError
from kappaflow.events.registry import register
from kappaflow.events.validate import Decoded, EventDecoder
from kappaflow.ingest.appender import Appender
from kappaflow.ingest.committer import GroupCommitter
from kappaflow.ingest.metrics import EVENTS_INGESTED, REQUESTS_REJECTED, UNKNOWN_STREAM
from kappaflow.ingest.rate import RateLimit
from kappaflow.log.base import Log
from kappaflow.server.http import Disconnected, read_body
from kappaflow.settings import Settings

log = logging.getLogger("kappaflow.ingest")
JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
BACKLOG_CHECK_S = 0.5
VERSION_HEADER = b"kappaflow-schema-version"
"""A request's header naming the version of the stream's schema its events are of;
without it, the newest version that reads the whole body is taken."""


PREFIX, SUFFIX = "/v1/streams/", "/events"
Answer = tuple[int, Any, dict[str, str]]
_encode = msgspec.json.Encoder().encode


class IngestService:
    def __init__(self, settings: Settings, apps: Sequence[App], log: Log) -> None:
        self.settings = settings
        self.log = log
        self.committer = GroupCommitter(log)
        self.streams: dict[str, tuple[App, Stream, Appender, dict[int, EventDecoder]]] = {}
        register(log, [stream for app in apps for stream in app.streams])
        for app in apps:
            for stream in app.streams:
                appender = Appender(log, stream, settings.partitions, settings.max_future_skew_s)
                decoders = {
                    version: EventDecoder(stream.schema_of(version))
                    for version in range(stream.version, 0, -1)
                }  # the current version first
                self.streams[stream.name] = (app, stream, appender, decoders)
        self.rate = RateLimit(settings.ingest_rate_limit) if settings.ingest_rate_limit else None
        self._backlog: dict[str, tuple[float, int]] = {}
        self._unknown: set[str] = set()
        """Streams whose backlog could not be read at the last check."""

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PREFIX) and path.endswith(SUFFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A raw ASGI app for the ingest route: the hot path skips the framework."""
        if scope["method"] != "POST":
            status, content, headers = 405, {"error": "use POST"}, {"allow": "POST"}
        else:
            status, content, headers = await self._post(scope, receive)
        body = _encode(content)
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.encode(), value.encode()) for name, value in headers.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def _post(self, scope: Scope, receive: Receive) -> Answer:
        name = scope["path"][len(PREFIX) : -len(SUFFIX)]
        found = self.streams.get(name)
        if found is None:
            message = f"unknown stream {name!r}"
            return self._refuse(UNKNOWN_STREAM, "unknown_stream", 404, message,
                                streams=sorted(self.streams))  # fmt: skip
        app, stream, appender, decoders = found
        headers = dict(scope["headers"])
        asked = headers.get(VERSION_HEADER)
        if asked is not None:
            if not (asked.isdigit() and int(asked) in decoders):
                message = (f"{VERSION_HEADER.decode()}: {asked.decode(errors='replace')!r} is "
                           f"no version of {name!r}'s schema: 1 to {stream.version}")  # fmt: skip
                return self._refuse(name, "unknown_version", 400, message)
            decoders = {int(asked): decoders[int(asked)]}
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode()
        if media_type not in JSON_TYPES | NDJSON_TYPES:
            message = f"content type {media_type or '(none)'!r} is not accepted"
            return self._refuse(name, "unsupported_media_type", 415, message,
                                accepted=sorted(JSON_TYPES | NDJSON_TYPES))  # fmt: skip
        if self.rate is not None:
            client = _client(scope)
            wait_s = self.rate.wait_s(client)
            if wait_s is not None:
                message = (f"{client} is over the rate limit ({self.rate}); "
                           f"retry in {wait_s} s")  # fmt: skip
                return self._refuse(name, "rate_limited", 429, message,
                                    headers={"retry-after": str(wait_s)})  # fmt: skip
        retry = {"retry-after": str(self.settings.retry_after_s)}
        backlog = await self._backlog_of(app, stream)
        if backlog > self.settings.ingest_max_backlog:
            message = (f"backlog of {backlog:,} events is over the bound "
                       f"{self.settings.ingest_max_backlog:,}; retry later")  # fmt: skip
            return self._refuse(name, "backlog", 429, message, headers=retry)
        limit = self.settings.ingest_max_body_bytes
        try:
            body = await read_body(headers, receive, limit)
        except Disconnected:
            return self._refuse(name, "disconnected", 400, "the client disconnected mid-body")
        if body is None:
            message = f"body is over the limit of {limit:,} bytes; send smaller batches"
            return self._refuse(name, "too_large", 413, message)
        try:
            version, (events, records) = _decoded(decoders, body, media_type in NDJSON_TYPES)
            by_partition = appender.encode(events, records, version)
        except InvalidEvents as invalid:
            message = invalid.summary("record")
            if len(decoders) > 1:
                message += (f" (as version {stream.version} of the schema, and no earlier "
                            "version reads the body either; the header "
                            f"{VERSION_HEADER.decode()} names the version sent)")  # fmt: skip
            return self._refuse(name, "invalid", 400, message, problems=invalid.problems)
        if events:
            try:
                await self.committer.append(name, by_partition)
            except LogError as failure:
                return self._refuse(name, "unavailable", 503, str(failure), headers=retry)
            EVENTS_INGESTED.labels(name).inc(len(events))
        return 202, {"accepted": len(events)}, {}

    def _refuse(
        self,
        stream: str,
        reason: str,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> Answer:
        REQUESTS_REJECTED.labels(stream, reason).inc()
        return status, {"error": message, **details}, headers or {}

    async def _backlog_of(self, app: App, stream: Stream) -> int:
        """Events of the stream appended but not processed, from the log alone (its end
        offsets less what the stream's workers acknowledged to it), so that a store
        outage does not stop ingest. Checked at most every 0.5 s, in a thread: a log
        that is slow to answer holds up no other request. While it cannot be read, the
        last one read stands (whether the log takes the append is the append's to say)."""
        now = time.monotonic()
        checked_at, backlog = self._backlog.get(stream.name, (0.0, 0))
        if now - checked_at < BACKLOG_CHECK_S:
            return backlog
        self._backlog[stream.name] = (now, backlog)  # requests meanwhile: the last one
        try:
            backlog = await asyncio.to_thread(self._backlog_now, app.group(stream), stream.name)
        except KappaflowError as failure:
            if stream.name not in self._unknown:
                log.warning("cannot read the backlog of %s (%s); going on with the last one "
                            "read, %d events", stream.name, failure, backlog)  # fmt: skip
                self._unknown.add(stream.name)
            return backlog
        if stream.name in self._unknown:
            log.warning("the backlog of %s is read again", stream.name)
            self._unknown.discard(stream.name)
        self._backlog[stream.name] = (now, backlog)
        return backlog

    def _backlog_now(self, group: str, topic: str) -> int:
        done = self.log.acknowledged(group, topic)
        ends = self.log.end_offsets(topic)
        return sum(max(0, end - done.get(partition, 0)) for partition, end in ends.items())

    async def close(self) -> None:
        await self.committer.drain()


def _client(scope: Scope) -> str:
    """Who sent the request, for its rate limit: its API key (`kappaflow.server.auth`),
    or with authentication off its address."""
    key = scope.get("state", {}).get("key")
    if key is not None:
        return f"key {key.id}"
    return f"address {(scope.get('client') or ('unknown',))[0]}"


def _decoded(decoders: dict[int, EventDecoder], body: bytes, ndjson: bool) -> tuple[int, Decoded]:
    """The version whose schema, first in ``decoders``' order, reads the whole body, and
    what it reads; raises the first version's `InvalidEvents` if none does."""
    refused = None
    for version, decoder in decoders.items():
        try:
            return version, decoder.decode_ndjson(body) if ndjson else decoder.decode_json(body)
        except InvalidEvents as invalid:
            refused = refused or invalid
    raise refused  # type: ignore[misc]
