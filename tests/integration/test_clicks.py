"""The real 1.usa.gov sample, replayed end to end through ``kappaflow up``; every count
of the API is compared with a count made here, straight from the file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import ua_parser

from kappaflow.apps.clicks.demo import sample_path

pytestmark = pytest.mark.integration
BAD_LINES = {101: b'{"a": "Mozilla/5.0", "t": 13319', 102: b"\xff\xfe\x00 binary garbage"}


def expected_counts(lines: list[bytes]) -> Counter:
    """(window, dimension, start, value) -> clicks, computed independently."""
    counts: Counter = Counter()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "_heartbeat_" in record:
            pairs = [("keepalive", "keepalive")]
            t = record["_heartbeat_"]
        else:
            t = record["t"]
            parsed = ua_parser.parse(record["a"]) if record.get("a") else None
            referrer = record.get("r")
            pairs = [
                ("country", record.get("c") or "unknown"),
                ("tz", record.get("tz") or "unknown"),
                ("browser", parsed.user_agent.family if parsed and parsed.user_agent else
                 ("Other" if parsed else "unknown")),
                ("os", parsed.os.family if parsed and parsed.os else
                 ("Other" if parsed else "unknown")),
                ("referrer", "direct" if referrer in (None, "", "direct")
                 else urlsplit(referrer).hostname or "unknown"),
                ("domain", urlsplit(record.get("u") or "").hostname or "unknown"),
                ("url", record.get("u") or "unknown"),
            ]  # fmt: skip
        for window, size in (("1m", 60), ("1h", 3600)):
            start = datetime.fromtimestamp(t - t % size, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for dimension, value in pairs:
                counts[window, dimension, start, value] += 1
    return counts


def test_replaying_the_real_sample_counts_every_click(tmp_path: Path, kappaflow) -> None:
    lines = gzip.decompress(sample_path().read_bytes()).splitlines()
    assert len(lines) == 3_560
    shared = Path(__file__).resolve().parents[3] / "shared/data/usagov_bitly_2012-03-16.jsonl"
    if shared.exists():  # the packaged sample is the shared data, byte for byte
        assert shared.read_bytes().splitlines() == lines
    with_bad = list(lines)
    for number, line in sorted(BAD_LINES.items()):
        with_bad.insert(number - 1, line)
    replayed = tmp_path / "clicks.jsonl.gz"
    replayed.write_bytes(gzip.compress(b"\n".join(with_bad) + b"\n"))

    with kappaflow("up", "--data-dir", str(tmp_path / "data")) as stack:
        result = subprocess.run(
            [sys.executable, "-m", "kappaflow", "replay", str(replayed), "--url", stack.url,
             "--stream", "clicks"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "3,560 accepted, 2 skipped" in result.stderr
        assert "line 101: Input data was truncated" in result.stderr
        assert "line 102: not a JSON object" in result.stderr
        stack.wait_for_no_lag("clicks")
        client = stack.client()
        got: Counter = Counter()
        dimensions = ("country", "tz", "browser", "os", "referrer", "domain", "url", "keepalive")
        for window in ("1m", "1h"):
            for dimension in dimensions:
                answer = client.get("/v1/clicks/counts",
                                    params={"dimension": dimension, "window": window})  # fmt: skip
                for row in answer.json():
                    got[window, dimension, row["start"], row["value"]] += row["clicks"]
        top = client.get("/v1/clicks/top", params={"window": "1h", "k": 3}).json()
        refused = client.post("/v1/streams/clicks/events", content=BAD_LINES[101],
                              headers={"content-type": "application/x-ndjson"})  # fmt: skip
    expected = expected_counts(lines)
    assert got == expected
    assert sum(n for (w, d, _, _), n in got.items() if w == "1h" and d == "country") == 3_440
    assert sum(n for (w, d, _, _), n in got.items() if w == "1h" and d == "keepalive") == 120
    for start in {row["start"] for row in top}:
        urls = sorted(((-n, v) for (w, d, s, v), n in expected.items()
                       if (w, d, s) == ("1h", "url", start)))[:3]  # fmt: skip
        assert [(row["value"], row["clicks"]) for row in top if row["start"] == start] == [
            (v, -n) for n, v in urls
        ]
    assert refused.status_code == 400
    assert refused.json()["problems"][0]["index"] == 0
