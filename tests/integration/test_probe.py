"""The demo's probe against ``kappaflow up``: it times each heartbeat it posts until
the query API shows it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kappaflow.apps.video.demo import Probe
from kappaflow.testing import wait_until

pytestmark = pytest.mark.integration
ENV = {"KAPPAFLOW_PARTITIONS": "2"}


def test_probe_times_each_heartbeat_until_the_query_api_shows_it(tmp_path: Path, kappaflow) -> None:
    with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=ENV) as stack:
        probe = Probe(stack.url, lambda: 1_767_225_600_000)
        prober = threading.Thread(target=probe.run)
        prober.start()
        try:
            wait_until(lambda: len(probe.latencies) >= 3, 30, "three heartbeats timed")
        finally:
            probe.stop.set()
            prober.join(10)
        shown = [stack.client().get(f"/v1/progress/probe-{n}/probe").json() for n in range(3)]
    assert len(probe.latencies) >= 3
    assert all(0 < latency < 10 for latency in probe.latencies)
    assert [progress["resume_position_s"] for progress in shown] == [0.0, 1.0, 2.0]
