"""The OpenAPI document of the HTTP services, derived from the apps' streams, queries and
uploads and from the types the services decode with, so that it states exactly what
each route accepts and answers (tests/integration/test_openapi_fuzz.py holds it to
that)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from kappaflow import __version__
from kappaflow.app import App, Stream
from kappaflow.events.validate import Problem
from kappaflow.ingest.service import JSON_TYPES, NDJSON_TYPES, VERSION_HEADER
from kappaflow.query.dashboard import Status
from kappaflow.query.params import Segment
from kappaflow.query.service import (
    UPLOAD_PARAMS,
    UPLOAD_TYPES,
    query_params,
    served_as_csv,
    served_queries,
)
from kappaflow.server.auth import needed

_PARAMETER = re.compile(r"{([^}]+)}")
REF = "#/components/schemas/{name}"
SCHEME = "apiKey"
ABOUT = (
    "Every route's parameters, bodies, answers and media types are as stated here; the "
    "rules JSON Schema cannot state (an event time at most max_future_skew_s ahead of the "
    "server's clock, from <= to) are in the descriptions, and answered 400 when broken. "
    "Beside the answers of each route, any request may be answered 400 (a Host name not in "
    "allowed_hosts), 408 (its head or body did not arrive within http_header_timeout_s or "
    "http_body_timeout_s) or 503 in plain text (the server holds http_max_connections "
    "connections)."
)


def _schema_of(kind: Any) -> dict[str, Any]:
    """The JSON schema of ``kind``; any value where it is None (not declared)."""
    if kind is None:
        return {}
    (schema,), _ = msgspec.json.schema_components([kind], ref_template=REF)
    return schema


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **({"content": content} if content else {})}


def _error(description: str) -> dict[str, Any]:
    return _answer(description, _json({"$ref": REF.format(name="Error")}))


def _get(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, **more, "responses": responses}}


def _status(word: str) -> dict[str, Any]:
    """A ``{"status": word}`` answer."""
    return {"type": "object", "properties": {"status": {"enum": [word]}}, "required": ["status"]}


def document(apps: Sequence[App], roles: Collection[str], auth: bool = False) -> dict[str, Any]:
    """The document of the routes of ``roles`` serving ``apps``; with ``auth``, each
    route's security (`secured`)."""
    types: list[Any] = [Problem, Status]
    paths: dict[str, Any] = {
        "/healthz": _get("The process is alive.", {"200": _answer("alive", _json(_status("ok")))}),
        "/readyz": _get("The log and the store (where queries are served) are reachable.", {
            "200": _answer("ready", _json(_status("ready"))),
            "503": _error("the log or the store is unreachable"),
        }),
        "/metrics": _get("Prometheus metrics (text format).", {
            "200": _answer("metrics", {"text/plain": {"schema": {"type": "string"}}}),
        }),
        "/openapi.json": _get("This document.", {
            "200": _answer("OpenAPI 3.1", _json({"type": "object"})),
        }),
        **{path: _get(about, {"200": _answer(about, {kind: {"schema": {"type": "string"}}})})
           for path, kind, about in [
               ("/", "text/html", "The dashboard: an HTML page showing /status as it changes."),
               ("/dashboard.js", "text/javascript", "The dashboard's script."),
               ("/dashboard.css", "text/css", "The dashboard's style sheet."),
           ]},
        "/status": _get("Per app stream: records appended, processed and lagging (also "
                        "by partition) and dead letters by reason; the queries.", {
            "200": _answer("status", _json(_schema_of(Status))),
            "503": _error("the log or the store is unreachable"),
        }),
    }  # fmt: skip
    if "ingest" in roles:
        for app in apps:
            for stream in app.streams:
                types.append(stream.schema)
                paths[f"/v1/streams/{stream.name}/events"] = _events(app, stream)
    if "query" in roles:
        for _, query in served_queries(apps):
            responses: dict[str, Any] = {"200": _answer("found", _json(_schema_of(query.result)))}
            if query.result is not None:
                types.append(query.result)
            if served_as_csv(query):
                responses["200"]["content"]["text/csv"] = {"schema": {"type": "string"}}
            responses["400"] = _error("invalid parameters")
            if not served_as_csv(query):  # a list is found, if empty
                responses["404"] = _error("nothing found")
            responses["503"] = _error("store unavailable; see Retry-After")
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": _schema_of(Segment)}
                for name in _PARAMETER.findall(query.path)
            ] + [
                {"name": name, "in": "query", "required": param.required,
                 "description": param.description, "schema": _schema_of(param.type)}
                for name, param in query_params(query).items()
            ]  # fmt: skip
            paths[query.path] = _get(query.summary, responses, parameters=parameters)
        for app in apps:
            for upload in app.uploads:
                types += [kind for kind in (upload.body, upload.result) if kind is not None]
                paths[upload.path] = {"post": {
                    "summary": upload.summary + " JSON or CSV; all rows or none.",
                    "parameters": [
                        {"name": name, "in": "query", "required": False,
                         "description": param.description, "schema": _schema_of(param.type)}
                        for name, param in UPLOAD_PARAMS.items() if upload.takes_valid_from
                    ],
                    "requestBody": {"required": True, "content": {
                        **_json(_schema_of(upload.body)),
                        "text/csv": {"schema": {"type": "string", "description": upload.csv}},
                    }},
                    "responses": {
                        "200": _answer("written", _json(_schema_of(upload.result))),
                        "400": _error("invalid rows (problems name them); nothing written"),
                        "413": _error("body over the limit"),
                        "415": _error(f"a content type other than {', '.join(UPLOAD_TYPES)}"),
                        "503": _error("store unavailable; see Retry-After"),
                    },
                }}  # fmt: skip
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    for app in apps:
        for stream in app.streams:
            if stream.schema.__name__ in components:
                extra = getattr(stream.schema, "extra_json_schema", {})
                components[stream.schema.__name__].update(extra)
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "problems": {"type": "array", "items": {"$ref": REF.format(name="Problem")}},
        },
        "required": ["error"],
    }
    found = {
        "openapi": "3.1.0",
        "info": {"title": "kappaflow", "version": __version__, "description": ABOUT},
        "paths": paths,
        "components": {"schemas": components},
    }
    return secured(found) if auth else found


def secured(found: dict[str, Any]) -> dict[str, Any]:
    """The document ``found`` with authentication on: the bearer scheme, and on each
    operation that needs a key its scope (`kappaflow.server.auth.needed`, as a role of
    the scheme) and the answers 401 and 403."""
    found["components"]["securitySchemes"] = {SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "An API key's secret (kappaflow keys create); each operation names "
                       "the scope the key needs: ingest (of the stream, for a key limited to "
                       "streams), query, admin or metrics.",
    }}  # fmt: skip
    for path, operations in found["paths"].items():
        for method, operation in operations.items():
            scope, _ = needed(method.upper(), path)
            if scope is None:
                operation["security"] = []
                continue
            operation["security"] = [{SCHEME: [scope]}]
            operation["responses"]["401"] = _error("no API key, or one unknown or revoked")
            operation["responses"]["403"] = _error(f"the API key has no scope {scope}")
    return found


def _events(app: App, stream: Stream) -> dict[str, Any]:
    """``POST /v1/streams/{stream}/events``."""
    ref = {"$ref": REF.format(name=stream.schema.__name__)}
    accepted = {"type": "object", "required": ["accepted"],
                "properties": {"accepted": {"type": "integer", "minimum": 0}}}  # fmt: skip
    version = {
        "name": VERSION_HEADER.decode(), "in": "header", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": stream.version},
        "description": f"The version of the stream's schema the events are of (the body's "
                       f"schema here is version {stream.version}'s); without it, the newest "
                       "version that reads the whole body.",
    }  # fmt: skip
    return {"post": {
        "summary": f"Append {stream.name} events (app {app.name}): one, an array of them, or "
                   "NDJSON (one a line). All or none.",
        "parameters": [version] if stream.earlier else [],
        "requestBody": {"required": True, "content": {
            **{media_type: {"schema": {"oneOf": [ref, {"type": "array", "items": ref}]}}
               for media_type in sorted(JSON_TYPES)},
            **{media_type: {"schema": ref} for media_type in sorted(NDJSON_TYPES)},
        }},
        "responses": {
            "202": _answer("all events are durably in the log", _json(accepted)),
            "400": _error("invalid records (problems name them), event times too far ahead "
                          "of the server's clock included; nothing written"),
            "413": _error("body over the limit"),
            "415": _error("unsupported content type"),
            "429": _error("backlog over the bound, or the API key (or address) over the "
                          "ingest rate limit; see Retry-After"),
            "503": _error("log unavailable; see Retry-After"),
        },
    }}  # fmt: skip
