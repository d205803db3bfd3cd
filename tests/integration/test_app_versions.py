"""Changing an app without downtime, through ``kappaflow up``, the CLI and HTTP only: a
version 2 of the video app (another session gap, `video_v2`) is deployed while version
1 serves; it replays the log into tables of its own while live events keep arriving
(one of its workers SIGKILLed meanwhile), and the queries answer from version 1 until
version 2 is promoted; then they answer what a fresh run of version 2 gives. Version 1
is promoted back (a roll-back), then version 2 again, and version 1 is retired. On the
embedded log with SQLite and PostgreSQL, and on Kafka with PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import ExitStack, closing, suppress
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import video_v2
from click.testing import CliRunner

from kappaflow.apps.video.app import create_app as create_video
from kappaflow.apps.video.catalog import catalog_rows
from kappaflow.apps.video.reports import impression_report, royalty_report
from kappaflow.apps.video.sim import simulate, simulated_catalog
from kappaflow.cli import main
from kappaflow.deployments import VersionReads
from kappaflow.log import open_log
from kappaflow.log.base import Log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import Store
from kappaflow.testing import run_events, wait_until

pytestmark = pytest.mark.integration
HEARTBEATS = "/v1/streams/heartbeats/events"
DAYS = {"from": "2026-01-01", "to": "2026-01-31"}
REPORTS = ("/v1/reports/royalties", "/v1/reports/impressions")


def expected(app_settings: Settings, create: Any, events: list, catalog: Any) -> dict:
    """The reports of a fresh run of the app ``create`` builds over ``events`` (with no
    session closed for its wall-clock idle time, as in the test's stack)."""
    app = create(app_settings)
    with closing(run_events(app, events, app_settings,
                            reference=catalog_rows(catalog))) as store:  # fmt: skip
        reads = VersionReads(store, app.renames)
        params = {"from": date(2026, 1, 1), "to": date(2026, 1, 31)}
        runs = (royalty_report, impression_report)
        return {path: msgspec.to_builtins(run(reads, params))
                for path, run in zip(REPORTS, runs, strict=True)}  # fmt: skip


def reports(client: httpx.Client) -> dict:
    return {path: client.get(path, params=DAYS).json() for path in REPORTS}


def post(client: httpx.Client, events: list) -> None:
    for start in range(0, len(events), 2_000):
        body = b"\n".join(msgspec.json.encode(e) for e in events[start : start + 2_000])
        answer = client.post(HEARTBEATS, content=body,
                             headers={"content-type": "application/x-ndjson"})  # fmt: skip
        assert answer.status_code == 202, answer.text


def apps(env: dict, *arguments: str) -> str:
    result = CliRunner().invoke(main, ["apps", *arguments], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def listed(env: dict) -> dict[str, dict]:
    return {row["app"]: row for row in json.loads(apps(env, "list", "--json", "--pace-s", "0"))}


def test_a_new_version_replays_beside_the_live_one_then_is_promoted_rolled_back_and_retired(
    tmp_path: Path, kappaflow: Any, stack_settings: Settings
) -> None:
    settings = stack_settings.replace(
        data_dir=str(tmp_path / "data"), apps=("video",), idle_timeout_s=3600.0,
        polling_interval_s=0.5, batch_max_events=500,
    )  # fmt: skip
    env = settings.to_environ()
    events = simulate(90_000, viewers=150, seed=3).events
    catalog = simulated_catalog()
    first, then = events[: len(events) * 2 // 3], events[len(events) * 2 // 3 :]
    fresh = settings.replace(log="embedded", store="sqlite")
    want_v1 = expected(fresh.replace(data_dir=str(tmp_path / "v1")), create_video, events, catalog)
    want_v2 = expected(fresh.replace(data_dir=str(tmp_path / "v2")), video_v2.create_app,
                       events, catalog)  # fmt: skip
    assert want_v1 != want_v2, "the versions' reports differ, so a test can tell them apart"

    with kappaflow("up", env=env) as stack, ExitStack() as opened:
        client = stack.client()
        upload = client.post("/v1/catalog", content=msgspec.json.encode(catalog),
                             headers={"content-type": "application/json"})  # fmt: skip
        assert upload.status_code == 200, upload.text
        openapi = client.get("/openapi.json").json()
        post(client, first)
        stack.wait_for_no_lag("video.")
        served_v1 = reports(client)
        # Opened once, before the deploy: a poll then takes milliseconds, well within
        # the second or so that version 2 takes to replay the log.
        store = opened.enter_context(closing(open_store(settings)))
        the_log = opened.enter_context(closing(open_log(settings)))

        out = apps(env, "deploy", "video@2", "--module", "video_v2")
        assert "video@2 is deployed: its workers start from the log's earliest records" in out
        assert listed(env)["video@2"]["status"] == "deployed"
        seen: list[dict] = []
        stop = threading.Event()

        def keep_querying() -> None:
            with httpx.Client(base_url=stack.url, timeout=10) as own:
                while not stop.is_set():
                    seen.append(reports(own))

        querying = threading.Thread(target=keep_querying)
        querying.start()
        try:
            pid = wait_until(lambda: replaying_worker(store, the_log, "video@2.heartbeats"), 60,
                             "a worker of video@2 halfway through the log", 0.01)  # fmt: skip
        finally:
            stop.set()
            querying.join()
            opened.close()  # the store and log polled
        os.kill(pid, signal.SIGKILL)
        assert len(seen) > 1 and all(answer == served_v1 for answer in seen), (
            "every query answered from version 1 while version 2 replayed")  # fmt: skip
        post(client, then)  # live events, while version 2 is behind and started again
        stack.wait_for_no_lag("video@2.")
        assert client.get("/openapi.json").json() == openapi
        wait_until(lambda: reports(client) == want_v1, 30, "version 1's reports of every event")
        assert served_v1 != want_v1

        stack.wait_for_no_lag("video@2.")
        assert "video@2 is live" in apps(env, "promote", "video@2")
        wait_until(lambda: reports(client) == want_v2, 30, "version 2's reports, as a fresh run's")
        versions = listed(env)
        assert (versions["video@1"]["status"], versions["video@2"]["status"]) == (
            "deployed", "live")  # fmt: skip

        apps(env, "promote", "video@1")  # a roll-back
        wait_until(lambda: reports(client) == want_v1, 30, "version 1's reports again")
        apps(env, "promote", "video@2")
        wait_until(lambda: reports(client) == want_v2, 30, "version 2's reports again")
        retire = CliRunner().invoke(main, ["apps", "retire", "video@2"], env=env)
        assert retire.exit_code == 1 and "video@2 is live, not deployed" in retire.output
        assert "video@1 is retired" in apps(env, "retire", "video@1")
        assert listed(env)["video@1"]["status"] == "retired"

        def versions_shown() -> set[int]:
            return {s["version"] for s in client.get("/status").json()["streams"]
                    if s["app"] == "video"}  # fmt: skip

        wait_until(lambda: versions_shown() == {2}, 30, "the status of version 2 alone")
        assert reports(client) == want_v2


def replaying_worker(store: Store, the_log: Log, group: str) -> int | None:
    """The pid of the worker running the version of ``group`` (``--version``) once it
    has committed some of the group's records and not all."""
    done = sum(store.committed_offsets(group).values())
    ends = sum(the_log.end_offsets("heartbeats").values())
    if not 0 < done < ends:
        return None
    version = group.split(".")[0]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                command = (entry / "cmdline").read_bytes().split(b"\0")
                if b"worker" in command and version.encode() in command:
                    return int(entry.name)
    return None
