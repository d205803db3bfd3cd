"""``GET /v1/dead-letters`` over HTTP (the real ASGI app in-process): JSON and CSV,
refused parameters, the OpenAPI document, and the store called off the event loop."""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from kappaflow.app import load_apps
from kappaflow.dead_letters import listing
from kappaflow.errors import StoreUnavailable
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import DeadLetter
from kappaflow.store.sql import StoreReads
from kappaflow.store.sqlite import SQLiteStore
from kappaflow.testing.services import serving

PATH = "/v1/dead-letters"


@pytest.fixture
def client(backend_settings: Settings) -> Iterator[httpx.Client]:
    """The query role, with dead letters of both built-in apps in its store."""
    store = open_store(backend_settings)
    store.commit("video.heartbeats", [], {}, [
        DeadLetter(2, 10, "late: event time 1 is below the watermark 9", b'{"user_id":"a,b"}'),
        DeadLetter(3, 11, "undecodable: expected an object", b"\x80\x81"),
    ])  # fmt: skip
    store.commit("clicks.clicks", [], {}, [DeadLetter(0, 5, "late: event time 2", b"{}")])
    store.close()
    with serving(backend_settings, ("query",)) as test_client:
        yield test_client


def test_dead_letters_as_json_and_csv(backend_settings: Settings, client: httpx.Client) -> None:
    answer = client.get(PATH, params={"reason": "late"})
    assert answer.status_code == 200
    store = open_store(backend_settings)
    expected = listing(load_apps(backend_settings), store, {"reason": "late"})
    store.close()
    assert answer.json() == msgspec.to_builtins(expected)
    assert [(d["stream"], d["partition"], d["offset"]) for d in answer.json()] == [
        ("clicks", 0, 5), ("heartbeats", 2, 10)
    ]  # fmt: skip
    for asked in ({"params": {"format": "csv"}}, {"headers": {"accept": "text/csv"}}):
        as_csv = client.get(PATH, **asked)
        assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert [(row["stream"], row["encoding"], row["record"]) for row in rows] == [
            ("clicks", "utf-8", "{}"), ("heartbeats", "base64", "gIE="),
            ("heartbeats", "utf-8", '{"user_id":"a,b"}'),
        ]  # fmt: skip
    one = client.get(PATH, params={"stream": "heartbeats", "limit": 1}).json()
    assert [(d["app"], d["group"], d["reason"]) for d in one] == [
        ("video", "video.heartbeats", "undecodable: expected an object")
    ]  # fmt: skip
    assert client.get(PATH, params={"since": "2999-01-01T00:00:00+01:00"}).json() == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stream": "nope"}, "stream must be one of clicks, heartbeats, got 'nope'"),
        ({"limit": "100000"}, "limit must be an integer from 1 to 10000, got '100000'"),
        (
            {"since": "soon"},
            "since must be unix seconds or an RFC 3339 time with a zone, got 'soon'",
        ),
        ({"format": "xml"}, "format must be one of csv, json, got 'xml'"),
        (  # more than the store's integers hold: was a 500
            {"partition": "0", "offsets": "1-99999999999999999999"},
            "offsets must be numbers and ranges like 0,2,5-7 (each low-high), "
            "got '1-99999999999999999999'",
        ),
    ],
)
def test_wrong_parameters_are_400_naming_them(
    client: httpx.Client, params: dict, message: str
) -> None:
    answer = client.get(PATH, params=params)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_the_openapi_document_and_the_dashboard_name_the_query(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"][PATH]["get"]
    assert [p["name"] for p in operation["parameters"]] == [
        "stream", "reason", "since", "partition", "offsets", "limit", "format"
    ]  # fmt: skip
    content = operation["responses"]["200"]["content"]
    assert content["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/DeadLetterInfo"
    }
    assert "text/csv" in content
    queries = client.get("/status").json()["queries"]
    assert queries[0] == {"app": "kappaflow", "path": PATH, "summary": operation["summary"]}


def test_a_store_that_is_gone_is_503(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(*args: object, **options: object) -> None:
        raise StoreUnavailable("PostgreSQL store: cannot connect")

    monkeypatch.setattr(StoreReads, "find_dead_letters", gone)
    answer = client.get(PATH)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": "PostgreSQL store: cannot connect"}


def test_a_slow_store_holds_up_no_other_request(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is read in a thread: while one listing waits on it, /healthz answers."""
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()
    find = SQLiteStore.find_dead_letters

    def slow(self: SQLiteStore, *args: object, **options: object) -> object:
        entered.set()
        release.wait(10)
        returned.set()
        return find(self, *args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(SQLiteStore, "find_dead_letters", slow)
    answers: list[httpx.Response] = []
    with serving(settings, ("query",)) as client:
        waiting = threading.Thread(target=lambda: answers.append(client.get(PATH)))
        waiting.start()
        assert entered.wait(10)
        health = client.get("/healthz")
        answered_meanwhile = not returned.is_set()
        release.set()
        waiting.join(10)
    assert health.status_code == 200 and answered_meanwhile
    assert [answer.json() for answer in answers] == [[]]
