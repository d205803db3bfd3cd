"""The load generator against ``kappaflow up``: what it reports of the events ingest
accepted, which the demo's probe takes its event time from."""

from __future__ import annotations

from pathlib import Path

import pytest

from kappaflow.apps.video import Heartbeat
from kappaflow.loadgen import LoadGenerator, encoded

pytestmark = pytest.mark.integration
ENV = {"KAPPAFLOW_PARTITIONS": "2"}


def test_latest_event_time_counts_only_accepted_events(tmp_path: Path, kappaflow) -> None:
    accepted = [Heartbeat(f"u{n}", "v", float(n), 1_000 + n) for n in range(3)]
    refused = [Heartbeat("u9", "v", 1.0, 90_000), Heartbeat("u9", "v", -1.0, 90_001)]
    with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=ENV) as stack:
        summary = LoadGenerator(stack.url, 1_000, encoded(accepted + refused, 3)).run()
    assert (summary.accepted, summary.rejected) == (3, 2)
    assert summary.latest_ms == 1_002
