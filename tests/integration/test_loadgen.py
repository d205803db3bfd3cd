"""The load generator against ``kappaflow up``: what it reports of the events ingest
accepted, which the demo's probe takes its event time from."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kappaflow.apps.video.app import Heartbeat
from kappaflow.apps.video.sim import hb_ms
from kappaflow.client.loadgen import LoadGenerator, encoded

pytestmark = pytest.mark.integration
ENV = {"KAPPAFLOW_PARTITIONS": "2"}
README_HEARTBEAT = {"user_id": "ann", "video_id": "v1", "position_s": 42.5,
                    "ts": "2026-11-23T10:00:00Z"}  # fmt: skip
"""The heartbeat the README posts by hand after a load generator's run."""
ACCEPTED = re.compile(r"accepted\W+([\d,]+)")


def test_latest_event_time_counts_only_accepted_events(tmp_path: Path, kappaflow) -> None:
    accepted = [Heartbeat(f"u{n}", "v", float(n), 1_000 + n) for n in range(3)]
    refused = [Heartbeat("u9", "v", 1.0, 90_000), Heartbeat("u9", "v", -1.0, 90_001)]
    with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=ENV) as stack:
        summary = LoadGenerator(
            stack.url, "heartbeats", 1_000, encoded(accepted + refused, 3, hb_ms)
        ).run()
    assert (summary.accepted, summary.rejected) == (3, 2)
    assert summary.latest_ms == 1_002


def test_two_loadgen_runs_and_a_heartbeat_by_hand_after_them_lose_nothing(
    tmp_path: Path, kappaflow
) -> None:
    """Event time follows the wall clock by default: a second run of the same viewers,
    and the README's heartbeat posted by hand after both, are none of them late."""
    accepted = 0
    with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=ENV) as stack:
        for _ in range(2):
            run = subprocess.run(
                [sys.executable, "-m", "kappaflow", "loadgen", "--url", stack.url,
                 "--rate", "1000", "--duration", "2", "--batch", "200"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            accepted += int(ACCEPTED.search(run.stderr)[1].replace(",", ""))  # its summary
        client = stack.client()
        posted = client.post("/v1/streams/heartbeats/events", json=README_HEARTBEAT)
        assert posted.status_code == 202
        stack.wait_for_no_lag("video")
        (heartbeats,) = [s for s in client.get("/status").json()["streams"]
                         if s["stream"] == "heartbeats"]  # fmt: skip
        assert accepted > 0
        assert (heartbeats["processed"], heartbeats["dead_letters"]) == (accepted + 1, 0)
        assert client.get("/v1/progress/ann/v1").json()["resume_position_s"] == 42.5
