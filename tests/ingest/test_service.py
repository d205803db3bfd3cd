"""The HTTP services in a thread of the test (the real server, app, log and store):
every answer of ingest, the queries, health, metrics and OpenAPI."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from openapi_spec_validator import validate

from kappaflow.app import load_apps
from kappaflow.apps.video.app import create_app
from kappaflow.errors import LogUnavailable
from kappaflow.ingest import service
from kappaflow.log import open_log
from kappaflow.log.embedded import EmbeddedLog
from kappaflow.query.params import read_params
from kappaflow.query.service import query_params
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.worker import Worker
from kappaflow.testing.services import serving

EVENTS = "/v1/streams/heartbeats/events"


def beat(user: str = "u", ts: int = 1000, position: float = 1.0, **extra) -> dict:
    return {"user_id": user, "video_id": "v", "position_s": position, "ts": ts, **extra}


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serving(settings, ("ingest", "query")) as test_client:
        yield test_client


def logged(settings: Settings) -> list[dict]:
    log = open_log(settings)
    records = []
    for partition in range(settings.partitions):
        batch = log.read("heartbeats", partition, 0, 10_000)
        records.extend(msgspec.json.decode(value) for value in batch.values)
    return records


def test_accepts_an_object_an_array_and_ndjson_durably(
    client: httpx.Client, settings: Settings
) -> None:
    one = client.post(EVENTS, json=beat("a"))
    many = client.post(EVENTS, json=[beat("b"), beat("c", kind="play")])
    lines = b"\n".join(msgspec.json.encode(beat(u)) for u in "de")
    ndjson = client.post(EVENTS, content=lines, headers={"content-type": "application/x-ndjson"})
    assert [r.status_code for r in (one, many, ndjson)] == [202, 202, 202]
    assert [r.json() for r in (one, many, ndjson)] == [{"accepted": n} for n in (1, 2, 2)]
    assert sorted(r["user_id"] for r in logged(settings)) == list("abcde")


def test_events_are_logged_as_they_came_unknown_fields_included(
    client: httpx.Client, settings: Settings
) -> None:
    """Any later version of the app may read a field this one ignores; the worker reads
    times as epoch milliseconds (tests/stream/test_worker.py)."""
    sent = beat(ts="1970-01-01T00:00:02.5+00:00", device="tv", position=2.0)
    assert client.post(EVENTS, json=sent).status_code == 202
    assert logged(settings) == [sent]


def test_integers_written_with_a_fraction_are_integers(
    client: httpx.Client, settings: Settings
) -> None:
    """JSON Schema, so the OpenAPI document, counts 2500.0 an integer: such times (and
    a click's integers) were refused. They are accepted; a fraction is not."""
    assert client.post(EVENTS, json=beat(ts=2500.0)).status_code == 202
    assert client.post(EVENTS, json=beat(ts=2500.5)).status_code == 400
    click = {"t": 1331923200.0, "nk": 1.0, "hc": 1331923200.0}
    assert client.post("/v1/streams/clicks/events", json=click).status_code == 202
    (stored,) = logged(settings)
    assert stored["ts"] == 2500


def test_one_bad_record_refuses_the_request_and_writes_nothing(
    client: httpx.Client, settings: Settings
) -> None:
    answer = client.post(EVENTS, json=[beat("a"), beat("b", position=-5), {"user_id": "c"}])
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"].startswith("2 invalid record(s)")
    assert [(p["index"], p["field"]) for p in body["problems"]] == [
        (1, "position_s"),
        (2, "video_id"),
    ]
    assert logged(settings) == []


def test_a_request_with_many_bad_records_says_how_many_of_them_it_lists(
    client: httpx.Client,
) -> None:
    answer = client.post(EVENTS, json=[beat(str(n), position=-1) for n in range(25)])
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "25 invalid record(s), the first 20 listed; nothing was written"
    assert [p["index"] for p in body["problems"]] == list(range(20))


def test_bodies_that_are_not_utf8_are_400_naming_the_record(
    client: httpx.Client, settings: Settings
) -> None:
    good = msgspec.json.encode(beat("a"))
    bad = good.replace(b'"a"', b'"a\xff"'.decode("unicode_escape").encode("latin-1"))
    for body, content_type in ((b"[" + good + b"," + bad + b"]", "application/json"),
                               (good + b"\n" + bad, "application/x-ndjson")):  # fmt: skip
        answer = client.post(EVENTS, content=body, headers={"content-type": content_type})
        assert answer.status_code == 400
        (problem,) = answer.json()["problems"]
        assert problem["index"] == 1 and "not valid UTF-8" in problem["reason"]
    assert logged(settings) == []


def test_json_nested_too_deeply_is_400_naming_the_problem(
    client: httpx.Client, settings: Settings
) -> None:
    deep = b'{"unknown": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"
    for content_type in ("application/json", "application/x-ndjson"):
        for stream in ("heartbeats", "clicks"):
            answer = client.post(f"/v1/streams/{stream}/events", content=deep,
                                 headers={"content-type": content_type})  # fmt: skip
            assert answer.status_code == 400
            assert "nested too deeply" in answer.json()["problems"][0]["reason"]
    assert logged(settings) == []


def test_identifiers_with_control_characters_or_slashes_are_400_naming_them(
    client: httpx.Client, settings: Settings
) -> None:
    answer = client.post(EVENTS, json=[beat("a"), beat("nd\x00b"), beat("c/d")])
    assert answer.status_code == 400
    assert [(p["index"], p["field"]) for p in answer.json()["problems"]] == [
        (1, "user_id"), (2, "user_id"),
    ]  # fmt: skip
    assert logged(settings) == []
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Heartbeat"]
    pattern = re.compile(schema["properties"]["user_id"]["pattern"])
    assert [bool(pattern.search(user)) for user in ("a", "nd\x00b", "c/d")] == [True, False, False]


def test_rfc3339_times_outside_epoch_milliseconds_are_400(
    client: httpx.Client, settings: Settings
) -> None:
    """Such times parse, but no epoch millisecond the log holds can carry them: refused
    at ingest, not sent on to the worker's dead letters."""
    times = ["1960-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-05:00"]
    answer = client.post(EVENTS, json=[beat("a"), *(beat("b", ts=t) for t in times)])
    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert [(p["index"], p["field"]) for p in problems] == [(1, "ts"), (2, "ts"), (3, "ts")]
    assert "is outside 1970-01-01 .. 9999-12-31 UTC" in problems[0]["reason"]
    assert logged(settings) == []


def test_times_too_far_ahead_of_the_clock_are_400_naming_the_record_and_field(
    client: httpx.Client, settings: Settings
) -> None:
    """One client's clock years ahead would otherwise hold its key's (or partition's)
    event clock there: refused at ingest, in milliseconds and RFC 3339 alike; a time
    within the skew is accepted."""
    now_ms = int(time.time() * 1000)
    skew_ms = round(settings.max_future_skew_s * 1000)
    ahead = [beat("a", ts=now_ms + skew_ms - 60_000), beat("b", ts=now_ms + skew_ms + 60_000),
             beat("c", ts="9999-01-01T00:00:00Z")]  # fmt: skip
    answer = client.post(EVENTS, json=ahead)
    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert [(p["index"], p["field"]) for p in problems] == [(1, "ts"), (2, "ts")]
    assert "ahead of the server's clock" in problems[0]["reason"]
    assert "KAPPAFLOW_MAX_FUTURE_SKEW_S" in problems[1]["reason"]
    assert logged(settings) == []
    assert client.post(EVENTS, json=ahead[0]).status_code == 202


def test_unknown_stream_is_404_naming_the_streams(client: httpx.Client) -> None:
    answer = client.post("/v1/streams/nope/events", json=beat())
    assert answer.status_code == 404
    assert answer.json() == {"error": "unknown stream 'nope'", "streams": ["clicks", "heartbeats"]}


def test_unsupported_content_type_is_415(client: httpx.Client) -> None:
    answer = client.post(EVENTS, content=b"{}", headers={"content-type": "text/csv"})
    assert answer.status_code == 415
    assert "application/x-ndjson" in answer.json()["accepted"]


def test_body_over_the_limit_is_413_and_writes_nothing(settings: Settings) -> None:
    settings = settings.replace(ingest_max_body_bytes=1_000)
    with serving(settings, ("ingest",)) as client:
        small = client.post(EVENTS, json=[beat()] * 5)
        big = client.post(EVENTS, json=[beat()] * 50)
        streamed = client.post(
            EVENTS,
            content=iter([msgspec.json.encode([beat()] * 50)]),  # chunked: no content-length
            headers={"content-type": "application/json"},
        )
    assert (small.status_code, big.status_code, streamed.status_code) == (202, 413, 413)
    assert "1,000 bytes" in big.json()["error"]
    assert len(logged(settings)) == 5


def test_backlog_over_the_bound_is_429_with_retry_after(settings: Settings) -> None:
    settings = settings.replace(ingest_max_backlog=3, retry_after_s=2)
    with serving(settings, ("ingest",)) as client:
        assert client.post(EVENTS, json=[beat(str(n)) for n in range(5)]).status_code == 202
        time.sleep(0.6)  # the backlog is checked at most every 0.5 s
        refused = client.post(EVENTS, json=beat())
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert "backlog of 5" in refused.json()["error"]
    assert len(logged(settings)) == 5


def test_the_backlog_is_read_from_the_log_alone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the workers acknowledged to the log counts as processed, whatever the store
    holds (it may be down): no commit in the store here."""
    monkeypatch.setattr(service, "BACKLOG_CHECK_S", 0)
    settings = settings.replace(ingest_max_backlog=3)
    with serving(settings, ("ingest",)) as client:
        assert client.post(EVENTS, json=[beat(str(n)) for n in range(5)]).status_code == 202
        assert client.post(EVENTS, json=beat()).status_code == 429
        reader = open_log(settings)
        ends = reader.end_offsets("heartbeats")
        done = dict(ends)
        done[next(p for p, end in ends.items() if end)] -= 1
        reader.acknowledge("video.heartbeats", "heartbeats", done)
        assert client.post(EVENTS, json=beat()).status_code == 202, "a backlog of 1"
        reader.acknowledge("video.heartbeats", "heartbeats", {p: 0 for p in ends})
        assert client.post(EVENTS, json=beat()).status_code == 429


def test_a_backlog_that_cannot_be_read_leaves_it_to_the_append(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As while Kafka's group coordinator loads: the log takes appends all the same."""

    def unreadable(log: EmbeddedLog, group: str, topic: str) -> dict[int, int]:
        raise LogUnavailable("the group's offsets cannot be read")

    monkeypatch.setattr(EmbeddedLog, "acknowledged", unreadable)
    with serving(settings, ("ingest",)) as client:
        assert client.post(EVENTS, json=beat()).status_code == 202
    assert len(logged(settings)) == 1


def test_progress_query_after_processing(client: httpx.Client, settings: Settings) -> None:
    events = [beat(ts=t * 1000, position=float(t)) for t in range(0, 25, 5)]
    assert client.post(EVENTS, json=events).status_code == 202
    assert client.get("/v1/progress/u/v").status_code == 404
    app = create_app(settings)
    worker = Worker(
        app, app.streams[0], open_log(settings), open_store(settings), settings, range(4)
    )
    worker.start()
    worker.poll()
    found = client.get("/v1/progress/u/v")
    assert found.status_code == 200
    assert found.json() == {
        "user_id": "u",
        "video_id": "v",
        "resume_position_s": 20.0,
        "watched_s": 20.0,
        "segments": [{"start_s": 0.0, "end_s": 20.0}],
    }
    assert client.get("/v1/progress/u/other").status_code == 404


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post(EVENTS, json=[beat("a"), beat("b")])
    client.post(EVENTS, json=[{"bad": 1}])
    text = client.get("/metrics").text
    assert 'kappaflow_events_ingested_total{stream="heartbeats"}' in text
    assert 'kappaflow_ingest_rejected_total{reason="invalid",stream="heartbeats"}' in text
    lag = [line for line in text.splitlines() if line.startswith('kappaflow_lag{group="video')]
    assert len(lag) == 4 and sum(float(line.split()[-1]) for line in lag) == 2


SAMPLE_PARAMS = {"dimension": "country", "window": "1h", "k": "5", "user_id": "u",
                 "video_id": "v", "license_holder": "h", "advertiser": "a"}  # fmt: skip
SAMPLE_RANGES = {"/v1/clicks": ("0", "60"), "/v1/reports": ("2026-01-01", "2026-01-02")}


class Reads(dict):
    """Query parameters that remember which of them a query read."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name: str, default=None):
        self.read.add(name)
        return super().get(name, default)


def test_openapi_lists_every_parameter_each_query_reads(settings: Settings) -> None:
    with serving(settings, ("ingest", "query")) as test_client:
        paths = test_client.get("/openapi.json").json()["paths"]
    store = open_store(settings)
    for query in (q for a in load_apps(settings) for q in a.queries):
        ranges = [bounds for prefix, bounds in SAMPLE_RANGES.items() if prefix in query.path]
        first, last = ranges[0] if ranges else ("", "")
        given = {**SAMPLE_PARAMS, "from": first, "to": last}
        params = Reads(read_params(query_params(query), given))
        query.run(store, params)
        documented = {p["name"] for p in paths[query.path]["get"]["parameters"]}
        assert params.read <= documented, (query.path, params.read - documented)
        assert params.read, query.path


def test_unknown_routes_methods_and_formats_are_json_errors(client: httpx.Client) -> None:
    answers = {
        ("GET", "/v1/nowhere"): (404, "GET /v1/nowhere: not found"),
        ("POST", "/v1/progress/u/v"): (405, "POST /v1/progress/u/v: method not allowed"),
        ("GET", "/v1/clicks/top?format=xml"): (400, "format must be one of csv, json, got 'xml'"),
    }
    for (method, path), (status, message) in answers.items():
        answer = client.request(method, path)
        assert (answer.status_code, answer.json()) == (status, {"error": message})
    allowed = client.request("DELETE", "/healthz").headers["allow"]
    assert sorted(allowed.split(", ")) == ["GET", "HEAD"]  # in the order of a set


def test_openapi_document_is_valid_and_lists_every_route(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    validate(document)
    assert {EVENTS, "/v1/progress/{user_id}/{video_id}", "/healthz", "/readyz"} <= set(
        document["paths"]
    )
    assert "Heartbeat" in document["components"]["schemas"]
