"""The catalog upload and the report queries over HTTP (the real ASGI app in-process),
and ``kappaflow catalog load``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from kappaflow.app import App, Upload
from kappaflow.apps.video.app import create_app
from kappaflow.cli import main
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import Store
from kappaflow.stream.worker import Worker
from kappaflow.testing.services import serving

CATALOG = {
    "videos": [
        {"video_id": "v", "title": "V", "duration_s": 600, "license_holder": "h1",
         "royalty_rate_per_minute": 0.6},
        {"video_id": "w", "title": "W", "duration_s": 600, "license_holder": "h2",
         "royalty_rate_per_minute": 1.2},
    ],
    "ad_slots": [{"video_id": "v", "position_s": 0, "advertiser": "acme", "campaign": "spring"}],
}  # fmt: skip
DAY0 = 1_767_225_600_000  # 2026-01-01


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serving(settings, ("ingest", "query")) as test_client:
        yield test_client


def watch(client: httpx.Client, settings: Settings, video: str, day: int, seconds: int) -> None:
    """Post a user's playback of ``video`` on ``day``, then process it until its
    session closes."""
    start = DAY0 + day * 86_400_000
    events = [{"user_id": "u", "video_id": video, "position_s": s, "ts": start + s * 1000}
              for s in range(0, seconds + 1, 5)]  # fmt: skip
    assert client.post("/v1/streams/heartbeats/events", json=events).status_code == 202
    clock, started = [0.0], time.time()
    app = create_app(settings)
    worker = Worker(app, app.streams[0], open_log(settings), open_store(settings), settings,
                    range(settings.partitions), lambda: clock[0],
                    lambda: started + clock[0])  # fmt: skip
    worker.start()
    while worker.poll():
        pass
    clock[0] += settings.idle_timeout_s + 1
    worker.poll()


def test_catalog_upload_then_reports_as_json_and_csv(client: httpx.Client, settings: Settings):
    assert client.post("/v1/catalog", json=CATALOG).json() == {"videos": 2, "ad_slots": 1}
    watch(client, settings, "v", 0, 60)
    watch(client, settings, "w", 1, 30)
    answer = client.get("/v1/reports/royalties?from=2026-01-01&to=2026-01-31")
    assert answer.json() == [
        {"day": "2026-01-01", "license_holder": "h1", "watched_s": 60.0, "amount": 0.6},
        {"day": "2026-01-02", "license_holder": "h2", "watched_s": 30.0, "amount": 0.6},
    ]
    only = client.get("/v1/reports/royalties?from=2026-01-01&to=2026-01-31&license_holder=h2")
    assert [row["license_holder"] for row in only.json()] == ["h2"]
    csv_answer = client.get("/v1/reports/royalties?from=2026-01-02&to=2026-01-02&format=csv")
    assert csv_answer.headers["content-type"].startswith("text/csv")
    assert csv_answer.text == "day,license_holder,watched_s,amount\n2026-01-02,h2,30.0,0.6\n"
    impressions = client.get(
        "/v1/reports/impressions?from=2026-01-01&to=2026-01-01",
        headers={"accept": "text/csv"},
    )
    assert impressions.text == (
        "day,advertiser,campaign,impressions,viewers\n2026-01-01,acme,spring,1,1\n"
    )
    assert client.get("/v1/reports/impressions?from=2027-01-01&to=2027-01-02").json() == []


def test_a_catalog_upload_takes_effect_from_its_valid_from_time(
    client: httpx.Client, settings: Settings
) -> None:
    assert client.post("/v1/catalog?valid_from=0", json=CATALOG).status_code == 200
    before_1970 = client.post("/v1/catalog?valid_from=1000-01-01T00:00:00Z", json=CATALOG)
    assert before_1970.status_code == 200  # before every event, as 0 is
    raised = {"videos": [{**CATALOG["videos"][0], "royalty_rate_per_minute": 6.0}]}
    answer = client.post("/v1/catalog?valid_from=2026-01-02T00:00:00Z", json=raised)
    assert answer.status_code == 200
    for bad in ("yesterday", "-1", "1e20", "2026-01-02"):
        refused = client.post(f"/v1/catalog?valid_from={bad}", json=raised)
        assert refused.status_code == 400 and "valid_from must be" in refused.json()["error"]
    watch(client, settings, "v", 0, 60)  # before the new rate
    watch(client, settings, "v", 1, 60)  # from its day on
    answer = client.get("/v1/reports/royalties?from=2026-01-01&to=2026-01-31")
    assert [(row["day"], row["amount"]) for row in answer.json()] == [
        ("2026-01-01", 0.6), ("2026-01-02", 6.0)
    ]  # fmt: skip
    (param,) = client.get("/openapi.json").json()["paths"]["/v1/catalog"]["post"]["parameters"]
    assert param["name"] == "valid_from"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2026-01-01", "to is required: a day like 2026-01-31"),
        ("from=2026-01-01&to=20260102", "to must be a day like 2026-01-31, got '20260102'"),
        ("from=yesterday&to=2026-01-01", "from must be a day"),
        ("from=2026-02-01&to=2026-01-01", "is after to"),
    ],
)
def test_bad_report_parameters_are_400(client: httpx.Client, query: str, message: str) -> None:
    answer = client.get(f"/v1/reports/royalties?{query}")
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_a_bad_catalog_row_refuses_the_whole_upload(client: httpx.Client, settings: Settings):
    bad = json.loads(json.dumps(CATALOG))
    bad["videos"][1]["royalty_rate_per_minute"] = -1
    answer = client.post("/v1/catalog", json=bad)
    assert answer.status_code == 400
    (problem,) = answer.json()["problems"]
    assert (problem["index"], problem["field"]) == (1, "videos.royalty_rate_per_minute")
    csv_body = b"video_id,position_s,advertiser,campaign\nv,10,acme,spring\nv,ten,acme,x\n"
    answer = client.post("/v1/catalog", content=csv_body, headers={"content-type": "text/csv"})
    assert answer.status_code == 400
    assert [(p["index"], p["field"]) for p in answer.json()["problems"]] == [(1, "position_s")]
    store = open_store(settings)
    assert store.query("SELECT count(*) FROM video_catalog") == [(0,)]
    assert store.query("SELECT count(*) FROM video_ad_slots") == [(0,)]
    assert client.post("/v1/catalog", content=b"x", headers={"content-type": "text/plain"}
                       ).status_code == 415  # fmt: skip


def test_every_bad_catalog_row_is_named_and_unknown_sections_are_refused(
    client: httpx.Client, settings: Settings
) -> None:
    bad = json.loads(json.dumps(CATALOG))
    bad["videos"][0]["royalty_rate_per_minute"] = 1e308  # would overflow a day's amount
    del bad["videos"][1]["title"]
    answer = client.post("/v1/catalog", json=bad)
    assert answer.status_code == 400
    assert answer.json()["error"] == "2 invalid row(s); nothing was written"
    assert [(p["index"], p["field"]) for p in answer.json()["problems"]] == [
        (0, "videos.royalty_rate_per_minute"), (1, "videos.title"),
    ]  # fmt: skip
    typo = client.post("/v1/catalog", json={"vidoes": CATALOG["videos"]})
    assert typo.status_code == 400
    assert "unknown field `vidoes`" in typo.json()["problems"][0]["reason"]
    header = b"video_id,title,duration_s,license_holder,royalty_rate_per_minute\n"
    csv_body = header + b"v1,t,10,h,inf\nv2,t,10,h,0.1,extra\n"
    answer = client.post("/v1/catalog", content=csv_body, headers={"content-type": "text/csv"})
    assert [(p["index"], p["field"], p["reason"]) for p in answer.json()["problems"]] == [
        (0, "royalty_rate_per_minute", "Expected `float` <= 1000.0"),
        (1, None, "1 more value(s) than the header has columns"),
    ]
    no_title = b"video_id,duration_s,license_holder,royalty_rate_per_minute\nv1,10,h,0.1\n"
    answer = client.post("/v1/catalog", content=no_title, headers={"content-type": "text/csv"})
    assert [(p["index"], p["field"]) for p in answer.json()["problems"]] == [(0, "title")]
    store = open_store(settings)
    assert store.query("SELECT count(*) FROM video_catalog") == [(0,)]


def test_catalog_identifiers_refuse_control_characters_and_slashes_and_titles_nul(
    backend_settings: Settings,
) -> None:
    """On each store: PostgreSQL refuses a NUL in text, and answered 500 (a title's too)."""
    bad = json.loads(json.dumps(CATALOG))
    bad["videos"][0]["title"] = "a\x00b"
    bad["videos"][1]["license_holder"] = "h\x00"
    bad["ad_slots"][0]["campaign"] = "a/b"
    csv_body = b"video_id,position_s,advertiser,campaign\nv,10,acme,spring\nv,20,a\x01,s\n"
    csv_titles = b"video_id,title,duration_s,license_holder,royalty_rate_per_minute\nv,\x00,1,h,1\n"
    with serving(backend_settings, ("query",)) as client:
        answer = client.post("/v1/catalog", json=bad)
        from_csv, titles = (client.post("/v1/catalog", content=body,
                                        headers={"content-type": "text/csv"})
                            for body in (csv_body, csv_titles))  # fmt: skip
    assert answer.status_code == 400
    assert [(p["index"], p["field"]) for p in answer.json()["problems"]] == [
        (0, "videos.title"), (1, "videos.license_holder"), (0, "ad_slots.campaign"),
    ]  # fmt: skip
    assert "an identifier may not hold control characters" in answer.json()["problems"][1]["reason"]
    assert from_csv.status_code == 400
    assert [(p["index"], p["field"]) for p in from_csv.json()["problems"]] == [(1, "advertiser")]
    assert [(p["index"], p["field"]) for p in titles.json()["problems"]] == [(0, "title")]
    store = open_store(backend_settings)
    assert store.query("SELECT count(*) FROM video_catalog") == [(0,)]
    assert store.query("SELECT count(*) FROM video_ad_slots") == [(0,)]
    store.close()


def test_a_catalog_nested_too_deeply_is_400_naming_the_problem(
    client: httpx.Client, tmp_path: Path, settings: Settings
) -> None:
    deep = b'{"videos": [' + b"[" * 1_000 + b"]" * 1_000 + b"]}"
    answer = client.post("/v1/catalog", content=deep, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert "nested too deeply" in answer.json()["problems"][0]["reason"]
    path = tmp_path / "deep.json"
    path.write_bytes(deep)
    loaded = CliRunner().invoke(
        main, ["catalog", "load", str(path), "--data-dir", settings.data_dir]
    )
    assert loaded.exit_code == 1 and "nested too deeply" in loaded.output


def test_an_upload_nested_too_deeply_for_its_app_is_400(settings: Settings) -> None:
    """Any app's upload: the service answers for a decoder the app calls itself."""

    def run(store: Store, body: bytes, content_type: str) -> object:
        return msgspec.json.decode(body)

    app = App("deep", streams=[], tables=[], uploads=[Upload("/v1/deep", run, "anything")])
    with (
        patch("kappaflow.server.serve.load_apps", return_value=[app]),
        serving(settings, ("query",)) as client,
    ):
        deep = b"[" * 1_000 + b"]" * 1_000
        answer = client.post("/v1/deep", content=deep, headers={"content-type": "application/json"})
        dated = client.post("/v1/deep?valid_from=0", json=[])  # its run takes no valid_from
        document = client.get("/openapi.json").json()
    assert answer.status_code == 400
    assert "nested too deeply" in answer.json()["error"]
    assert dated.status_code == 400
    assert dated.json()["error"] == "/v1/deep keeps no history: valid_from is not taken"
    assert document["paths"]["/v1/deep"]["post"]["parameters"] == []


def test_catalog_load_command(tmp_path: Path, settings: Settings) -> None:
    videos = tmp_path / "videos.csv"
    videos.write_text(
        "video_id,title,duration_s,license_holder,royalty_rate_per_minute\n"
        'v,"A, title",600,h1,0.5\nw,W,60,h2,1\n'
    )
    broken = tmp_path / "slots.csv"
    broken.write_text("video_id,position_s,advertiser,campaign\nv,-3,acme,spring\n")
    runner = CliRunner()
    loaded = runner.invoke(main, ["catalog", "load", str(videos), "--data-dir", settings.data_dir])
    assert loaded.exit_code == 0, loaded.output
    assert "loaded 2 videos and 0 ad slots" in loaded.output
    later = runner.invoke(main, ["catalog", "load", str(videos), "--data-dir", settings.data_dir,
                                 "--valid-from", "2026-03-01T00:00:00Z"])  # fmt: skip
    assert later.exit_code == 0, later.output
    too_early = runner.invoke(main, ["catalog", "load", str(videos), "--data-dir",
                                     settings.data_dir, "--valid-from", "-1"])  # fmt: skip
    assert too_early.exit_code == 2 and "valid_from must be" in too_early.output
    refused = runner.invoke(main, ["catalog", "load", str(broken), "--data-dir", settings.data_dir])
    assert refused.exit_code == 1
    assert "row 0: position_s" in refused.output and "nothing was loaded" in refused.output
    store = open_store(settings)
    assert store.query("SELECT video_id, title FROM video_catalog ORDER BY 1") == [
        ("v", "A, title"), ("w", "W")
    ]  # fmt: skip
    march = 1_772_323_200_000  # 2026-03-01T00:00:00Z
    assert store.query("SELECT valid_from_ms FROM video_catalog_history WHERE valid_from_ms = ?",
                       (march,)) == [(march,), (march,)]  # fmt: skip
