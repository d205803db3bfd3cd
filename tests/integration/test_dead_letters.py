"""Dead letters as a user meets them through ``kappaflow up``: a click too late for the
allowed lateness is dead-lettered, listed over HTTP and by ``kappaflow dead-letters
list``, replayed after the fix (a larger lateness) and counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kappaflow.log import partition_for
from kappaflow.settings import Settings
from kappaflow.testing import wait_until

pytestmark = pytest.mark.integration
CLICKS = "/v1/streams/clicks/events"


def kappaflow_command(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kappaflow", *arguments],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_a_late_click_is_listed_replayed_after_the_fix_and_counted(
    tmp_path: Path, kappaflow, stack_settings: Settings
) -> None:
    """On each stack: embedded, embedded + PostgreSQL, Kafka + PostgreSQL."""
    data = ["--data-dir", str(tmp_path / "data")]
    env = {
        "KAPPAFLOW_PARTITIONS": str(stack_settings.partitions),
        "KAPPAFLOW_IDLE_TIMEOUT_S": "3600",  # no idle flush moves the watermark meanwhile
        "KAPPAFLOW_LOG": stack_settings.log,
        "KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": stack_settings.kafka_bootstrap_servers,
        "KAPPAFLOW_STORE": stack_settings.store,
        "KAPPAFLOW_POSTGRES_DSN": stack_settings.postgres_dsn,
    }
    now = int(time.time())
    hour = datetime.fromtimestamp(now - 7200 - (now - 7200) % 3600, UTC)
    started = time.time()
    with kappaflow("up", *data, env=env) as stack:
        client = stack.client()
        assert client.post(CLICKS, json={"t": now, "g": "link", "c": "US"}).status_code == 202
        # Two hours behind the link's last click: over the allowed lateness of 30 s.
        assert (
            client.post(CLICKS, json={"t": now - 7200, "g": "link", "c": "XL"}).status_code == 202
        )

        def dead_letters() -> list[dict]:
            return client.get("/v1/dead-letters", params={"stream": "clicks"}).json()

        (letter,) = wait_until(dead_letters, 30, "the late click among the dead letters")
        assert (letter["app"], letter["stream"], letter["encoding"]) == (
            "clicks",
            "clicks",
            "utf-8",
        )
        assert letter["reason"].startswith("late: event time ")
        assert letter["partition"] == partition_for("link", stack_settings.partitions)
        assert json.loads(letter["record"]) == {"t": now - 7200, "c": "XL", "g": "link"}
        assert started <= letter["dead_lettered_at"] <= time.time()
        as_csv = client.get("/v1/dead-letters", params={"reason": "late", "format": "csv"})
        assert len(as_csv.text.splitlines()) == 2
        status = client.get("/status").json()
        (clicks,) = [stream for stream in status["streams"] if stream["stream"] == "clicks"]
        assert clicks["dead_letters_by_reason"] == {"late": 1}
        listed = kappaflow_command("dead-letters", "list", *data, "--format", "json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == [letter]
        if stack_settings.log == "embedded":  # `up` holds the log: the command says so
            busy = kappaflow_command("dead-letters", "replay", *data, "--stream", "clicks",
                                     env=env)  # fmt: skip
            assert busy.returncode == 1
            assert "stop it (kappaflow up, or kappaflow ingest), replay" in busy.stderr
        assert stack.stop() == 0

    replayed = kappaflow_command("dead-letters", "replay", *data, "--stream", "clicks",
                                 "--reason", "late", env=env)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(
        f"replayed 1 dead letter(s) of clicks to its log (partition {letter['partition']}: 1)"
    )
    fixed = {**env, "KAPPAFLOW_ALLOWED_LATENESS_S": str(3 * 3600)}
    with kappaflow("up", *data, env=fixed) as stack:
        stack.wait_for_no_lag("clicks")
        client = stack.client()
        counts = client.get("/v1/clicks/counts",
                            params={"dimension": "country", "window": "1h"}).json()  # fmt: skip
        assert {"window": "1h", "start": hour.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": "XL",
                "clicks": 1} in counts  # fmt: skip
        assert client.get("/v1/dead-letters").json() == []
