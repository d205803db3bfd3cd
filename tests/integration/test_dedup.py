"""Client retries through ``kappaflow up``: a click and a heartbeat posted again (after
a restart of the stack) and two clicks of one request with the same ``event_id`` count
once; each retry is listed among the dead letters as a duplicate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kappaflow.settings import Settings
from kappaflow.testing import wait_until

pytestmark = pytest.mark.integration
CLICKS, HEARTBEATS = "/v1/streams/clicks/events", "/v1/streams/heartbeats/events"


def test_retries_count_once_and_are_listed_as_duplicates(
    tmp_path: Path, kappaflow, backend_settings: Settings
) -> None:
    """On SQLite and on PostgreSQL."""
    data = ["--data-dir", str(tmp_path / "data")]
    env = {
        "KAPPAFLOW_PARTITIONS": str(backend_settings.partitions),
        "KAPPAFLOW_STORE": backend_settings.store,
        "KAPPAFLOW_POSTGRES_DSN": backend_settings.postgres_dsn,
    }
    now = int(time.time())
    click = {"t": now, "g": "link", "c": "US", "event_id": "click-1"}
    twice = [{"t": now, "g": "link", "c": "FR", "event_id": "click-2"}] * 2
    beat = {"user_id": "ann", "video_id": "v1", "position_s": 42.5, "ts": now * 1000,
            "event_id": "beat-1"}  # fmt: skip
    with kappaflow("up", *data, env=env) as stack:
        client = stack.client()
        for path, body in ((CLICKS, click), (CLICKS, twice), (HEARTBEATS, beat)):
            assert client.post(path, json=body).status_code == 202
        stack.wait_for_no_lag()
        assert stack.stop() == 0
    with kappaflow("up", *data, env=env) as stack:  # the retries meet a restored stack
        client = stack.client()
        for path, body in ((CLICKS, click), (HEARTBEATS, beat)):
            assert client.post(path, json=body).status_code == 202

        def duplicates() -> list[dict]:
            listed = client.get("/v1/dead-letters", params={"reason": "duplicate"}).json()
            return listed if len(listed) == 3 else []

        letters = wait_until(duplicates, 60, "the three duplicates among the dead letters")
        stack.wait_for_no_lag()
        assert sorted((letter["stream"], letter["reason"]) for letter in letters) == [
            ("clicks", "duplicate: event_id 'click-1' of an earlier event of its key"),
            ("clicks", "duplicate: event_id 'click-2' of an earlier event of its key"),
            ("heartbeats", "duplicate: event_id 'beat-1' of an earlier event of its key"),
        ]
        counts = client.get("/v1/clicks/counts", params={"dimension": "country"}).json()
        assert sorted((count["value"], count["clicks"]) for count in counts) == [
            ("FR", 1),
            ("US", 1),
        ]
        progress = client.get("/v1/progress/ann/v1").json()
        assert progress["resume_position_s"] == 42.5
        status = client.get("/status").json()
        by_stream = {s["stream"]: s["dead_letters_by_reason"] for s in status["streams"]}
        assert by_stream == {"clicks": {"duplicate": 2}, "heartbeats": {"duplicate": 1}}
