"""The query service: each app's read queries as ``GET`` routes over the store."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kappaflow.app import App, Query
from kappaflow.errors import InvalidQuery, StoreUnavailable
from kappaflow.http import error, json_response
from kappaflow.settings import Settings
from kappaflow.store.base import Store


class QueryService:
    def __init__(self, settings: Settings, apps: Sequence[App], store: Store) -> None:
        self.settings = settings
        self.store = store
        self.queries = [query for app in apps for query in app.queries]
        self.routes = [Route(q.path, self._endpoint(q), methods=["GET"]) for q in self.queries]

    def _endpoint(self, query: Query):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            params = {**request.query_params, **request.path_params}
            try:
                result = query.run(self.store, params)
            except InvalidQuery as invalid:
                return error(400, str(invalid))
            except StoreUnavailable as failure:
                retry = {"Retry-After": str(self.settings.retry_after_s)}
                return error(503, str(failure), retry)
            if result is None:
                return error(404, f"nothing found at {request.url.path}")
            return json_response(result)

        return endpoint
