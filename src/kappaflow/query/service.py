"""The query service: each app's read queries, and kappaflow's own (the dead letters),
as ``GET`` routes over the store (JSON, or CSV for tabular results), and the apps'
reference-data uploads as ``POST`` routes. The store is called in a thread: a slow
store holds up no other request."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, get_origin

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kappaflow import dead_letters
from kappaflow.app import App, Param, Query, Upload
from kappaflow.deployments import VersionReads
from kappaflow.errors import InvalidEvents, InvalidQuery, StoreUnavailable
from kappaflow.events.validate import TOO_DEEP
from kappaflow.query.params import (
    CONTROL_CHARACTER,
    VALID_FROM_PARAM,
    ValidFrom,
    read_params,
    valid_from_ms,
)
from kappaflow.server.http import Blocking, Disconnected, error, json_response, read_body
from kappaflow.settings import Settings
from kappaflow.store.base import Store

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]
UPLOAD_TYPES = ("application/json", "text/csv")
UPLOAD_PARAMS = {VALID_FROM_PARAM: Param("when the rows are valid from", type=ValidFrom)}
FORMAT = Param("csv: the rows as CSV, as with Accept: text/csv (default json)",
               type=Literal["json", "csv"])  # fmt: skip


def served_queries(apps: Sequence[App]) -> list[tuple[str, Query]]:
    """(who declares it, query) of every read query served: kappaflow's own, then each
    app's."""
    return [("kappaflow", dead_letters.query(apps)),
            *((app.name, query) for app in apps for query in app.queries)]  # fmt: skip


def served_as_csv(query: Query) -> bool:
    """Whether the query's result, a list, is also served as CSV."""
    return get_origin(query.result) is list


def query_params(query: Query) -> dict[str, Param]:
    """The query-string parameters of the query's route: its own, and ``format`` where
    it is served as CSV."""
    return {**query.params, "format": FORMAT} if served_as_csv(query) else dict(query.params)


class QueryService:
    """The routes of ``apps`` (each app's live version); each runs its query or upload
    in ``blocking``'s thread."""

    def __init__(
        self, settings: Settings, apps: Sequence[App], store: Store, blocking: Blocking
    ) -> None:
        self.settings = settings
        self.store = store
        self.blocking = blocking
        served = served_queries(apps)
        self.queries = [query for _, query in served]
        reads = {app.name: VersionReads(store, app.renames) for app in apps if app.renames}
        self.routes = [Route(q.path, self._query(q, reads.get(owner, store)), methods=["GET"])
                       for owner, q in served]  # fmt: skip
        self.routes += [
            Route(u.path, self._upload(u), methods=["POST"]) for app in apps for u in app.uploads
        ]

    def _unavailable(self, failure: StoreUnavailable) -> Response:
        return error(503, str(failure), {"Retry-After": str(self.settings.retry_after_s)})

    def _query(self, query: Query, store: Store) -> Endpoint:
        """The route of ``query``, reading ``store`` (its app version's tables)."""
        declared, csv_too = query_params(query), served_as_csv(query)

        async def endpoint(request: Request) -> Response:
            given = {**request.query_params, **request.path_params}
            for name, value in given.items():
                if found := CONTROL_CHARACTER.search(value):
                    return error(400, f"parameter {name}: {value!r} holds {found.group()!r}: "
                                 "parameters may not hold control characters "
                                 "(U+0000 to U+001F, U+007F)")  # fmt: skip
            try:
                params = read_params(declared, given)
                result = await self.blocking.run(query.run, store, params)
            except InvalidQuery as invalid:
                return error(400, str(invalid))
            except StoreUnavailable as failure:
                return self._unavailable(failure)
            if result is None:
                return error(404, f"nothing found at {request.url.path}")
            accept = request.headers.get("accept", "")
            if csv_too and (params.get("format") == "csv" or "text/csv" in accept):
                return Response(to_csv(result), media_type="text/csv; charset=utf-8")
            return json_response(result)

        return endpoint

    def _upload(self, upload: Upload) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type not in UPLOAD_TYPES:
                return error(415, f"content type {media_type!r} is not accepted",
                             accepted=list(UPLOAD_TYPES))  # fmt: skip
            limit = self.settings.ingest_max_body_bytes
            try:
                body = await read_body(dict(request.scope["headers"]), request.receive, limit)
            except Disconnected:
                return error(400, "the client disconnected mid-body")
            if body is None:
                return error(413, f"body is over the limit of {limit:,} bytes")
            given = request.query_params.get(VALID_FROM_PARAM)
            if given is not None and not upload.takes_valid_from:
                return error(400, f"{upload.path} keeps no history: {VALID_FROM_PARAM} is not "
                                  "taken")  # fmt: skip
            try:
                valid_from = None if given is None else valid_from_ms(given)
            except InvalidQuery as invalid:
                return error(400, str(invalid))
            try:
                return json_response(
                    await self.blocking.run(upload.write, self.store, body, media_type, valid_from)
                )
            except InvalidEvents as invalid:
                return error(400, invalid.summary("row"), problems=invalid.problems)
            except RecursionError:  # from msgspec, for JSON nested past Python's limit
                return error(400, f"body is {TOO_DEEP}")
            except StoreUnavailable as failure:
                return self._unavailable(failure)

        return endpoint


def to_csv(rows: list[Any]) -> str:
    """Rows (msgspec structs) as CSV with a header line; an empty list is empty."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0].__struct_fields__)
    writer.writerows(msgspec.structs.astuple(row) for row in rows)
    return out.getvalue()
