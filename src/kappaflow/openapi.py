"""The OpenAPI document of the HTTP services, derived from the apps' streams and the
queries served, so it always matches what is served."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any, get_origin

import msgspec

from kappaflow import __version__
from kappaflow.app import App
from kappaflow.events.validate import Problem
from kappaflow.ingest.service import NDJSON_TYPES
from kappaflow.query.dashboard import Status
from kappaflow.query.service import served_queries

_PARAMETER = re.compile(r"{([^}]+)}")
REF = "#/components/schemas/{name}"
CSV_FORMAT = {"name": "format", "in": "query", "required": False, "schema": {"enum": ["csv"]},
              "description": "csv: the rows as CSV, as with Accept: text/csv"}  # fmt: skip


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schema_of(kind: Any) -> dict[str, Any]:
    (schema,), _ = msgspec.json.schema_components([kind], ref_template=REF)
    return schema


def _get(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": responses}}


def document(apps: Sequence[App], roles: Collection[str]) -> dict[str, Any]:
    types: list[Any] = [Problem, Status]
    paths: dict[str, Any] = {
        "/healthz": _get("The process is alive.", {"200": {"description": "alive"}}),
        "/readyz": _get("The log and the store are reachable.", {
            "200": {"description": "ready"},
            "503": _error("the log or the store is unreachable"),
        }),
        "/metrics": _get("Prometheus metrics (text format).", {
            "200": {"description": "metrics", "content": {"text/plain": {}}},
        }),
        "/openapi.json": _get("This document.", {"200": {"description": "OpenAPI 3.1"}}),
        "/": _get("The dashboard: an HTML page showing /status as it changes.", {
            "200": {"description": "dashboard", "content": {"text/html": {}}},
        }),
        "/status": _get("Per app stream: records appended, processed and lagging (also "
                        "by partition) and dead letters by reason; the queries.", {
            "200": {"description": "status", "content": {"application/json": {
                "schema": _schema_of(Status)}}},
            "503": _error("the log or the store is unreachable"),
        }),
    }  # fmt: skip
    if "ingest" in roles:
        for app in apps:
            for stream in app.streams:
                types.append(stream.schema)
                ref = {"$ref": f"#/components/schemas/{stream.schema.__name__}"}
                body = {"oneOf": [ref, {"type": "array", "items": ref}]}
                paths[f"/v1/streams/{stream.name}/events"] = {"post": {
                    "summary": f"Append {stream.name} events (app {app.name}).",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": body},
                        **{media_type: {"schema": ref} for media_type in NDJSON_TYPES},
                    }},
                    "responses": {
                        "202": {"description": "all events are durably in the log",
                                "content": {"application/json": {"schema": {
                                    "type": "object",
                                    "properties": {"accepted": {"type": "integer"}}}}}},
                        "400": _error("invalid records (problems name them); nothing written"),
                        "404": _error("unknown stream"),
                        "413": _error("body over the limit"),
                        "415": _error("unsupported content type"),
                        "429": _error("backlog over the bound; see Retry-After"),
                        "503": _error("log or store unavailable; see Retry-After"),
                    },
                }}  # fmt: skip
    if "query" in roles:
        for _, query in served_queries(apps):
            responses: dict[str, Any] = {
                "200": {"description": "found"},
                "400": _error("invalid parameters"),
                "404": _error("nothing found"),
                "503": _error("store unavailable"),
            }
            if query.result is not None:
                types.append(query.result)
                schema = _schema_of(query.result)
                responses["200"]["content"] = {"application/json": {"schema": schema}}
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PARAMETER.findall(query.path)
            ] + [
                {"name": name, "in": "query", "required": param.required,
                 "description": param.description, "schema": {"type": "string"}}
                for name, param in query.params.items()
            ]  # fmt: skip
            if get_origin(query.result) is list:  # also served as CSV
                responses["200"]["content"]["text/csv"] = {"schema": {"type": "string"}}
                parameters.append(CSV_FORMAT)
            paths[query.path] = {"get": {
                "summary": query.summary, "parameters": parameters, "responses": responses,
            }}  # fmt: skip
        for app in apps:
            for upload in app.uploads:
                paths[upload.path] = {"post": {
                    "summary": upload.summary + " JSON or CSV; all rows or none.",
                    "requestBody": {"required": True, "content": {
                        "application/json": {}, "text/csv": {}}},
                    "responses": {
                        "200": {"description": "written"},
                        "400": _error("invalid rows (problems name them); nothing written"),
                        "413": _error("body over the limit"),
                        "415": _error("unsupported content type"),
                        "503": _error("store unavailable; see Retry-After"),
                    },
                }}  # fmt: skip
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "problems": {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}},
        },
        "required": ["error"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "kappaflow", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
