"""Click records as the feed wrote them, and the click queries' parameters."""

from __future__ import annotations

import msgspec
import pytest

from kappaflow.apps.clicks.app import Click, dimensions
from kappaflow.settings import Settings
from kappaflow.testing.services import serving

decode = msgspec.json.Decoder(Click).decode


def pairs(click: Click) -> dict[str, str]:
    return {pair.dimension: pair.value for pair in dimensions(click)}


def test_a_record_with_most_fields_missing_still_counts() -> None:
    click = decode(b'{"t": 1331923247, "u": "http://www.nasa.gov/x?y=1", "r": "direct"}')
    assert pairs(click) == {
        "country": "unknown", "tz": "unknown", "browser": "unknown", "os": "unknown",
        "referrer": "direct", "domain": "www.nasa.gov", "url": "http://www.nasa.gov/x?y=1",
    }  # fmt: skip


def test_user_agents_referrers_and_unicode() -> None:
    record = (
        '{"t": 1, "c": "JP", "tz": "Asia/Tokyo", "r": "http://t.co/ÄbC", '
        '"a": "Mozilla/5.0 (iPhone; CPU iPhone OS 5_1 like Mac OS X) AppleWebKit/534.46 '
        '(KHTML, like Gecko) Version/5.1 Mobile/9B176 Safari/7534.48.3"}'
    )
    found = pairs(decode(record.encode()))
    assert (found["browser"], found["os"]) == ("Mobile Safari", "iOS")
    assert found["referrer"] == "t.co" and found["country"] == "JP"
    odd = pairs(decode(b'{"t": 1, "a": "GoogleMaps/RochesterNY"}'))
    assert (odd["browser"], odd["os"]) == ("Other", "Other")


def test_keepalive_lines_count_only_as_keepalives() -> None:
    keepalive = decode(b'{"_heartbeat_": 1331923261}')
    assert keepalive.t == 1331923261
    assert pairs(keepalive) == {"keepalive": "keepalive"}
    with pytest.raises(msgspec.ValidationError, match="needs its time"):
        decode(b'{"c": "US"}')


def test_click_times_past_the_year_9999_are_refused_by_ingest(settings: Settings) -> None:
    with serving(settings, ("ingest",)) as client:
        answer = client.post(
            "/v1/streams/clicks/events",
            content=b'{"t": 1331923247}\n{"t": 100000000000000000}\n{"_heartbeat_": -1}\n',
            headers={"content-type": "application/x-ndjson"},
        )
    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert [p["index"] for p in problems] == [1, 2]
    assert "<= 253402300799" in problems[0]["reason"]
    assert ">= 0" in problems[1]["reason"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/clicks/counts?dimension=planet", "dimension must be one of"),
        ("/v1/clicks/counts?dimension=country&window=2h", "window must be one of"),
        ("/v1/clicks/counts?dimension=country&from=yesterday", "from must be unix seconds"),
        ("/v1/clicks/counts?dimension=country&from=inf", "from must be unix seconds"),
        ("/v1/clicks/top?to=-Infinity", "to must be unix seconds"),
        (
            "/v1/clicks/top?from=1331926800&to=1331923200",
            "from (2012-03-16T19:40:00Z) is after to (2012-03-16T18:40:00Z)",
        ),
        ("/v1/clicks/top?k=0", "k must be an integer"),
        ("/v1/clicks/top?k=ten", "k must be an integer"),
    ],
)
def test_bad_click_query_parameters_are_400(settings: Settings, path: str, message: str) -> None:
    with serving(settings, ("query",)) as client:
        answer = client.get(path)
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_time_ranges_accept_unix_seconds_and_rfc3339(settings: Settings) -> None:
    """Beyond any event time, a time is taken as its limits: the largest numbers (1e306
    seconds, in milliseconds an infinity) answered 500."""
    with serving(settings, ("query",)) as client:
        for bounds in ("from=1331923200&to=1331926800",
                       "from=2012-03-16T18:00:00Z&to=2012-03-16T19:00:00%2B00:00",
                       "from=-1e30&to=1e30", "from=-1.7e308&to=1e306"):  # fmt: skip
            answer = client.get(f"/v1/clicks/counts?dimension=country&{bounds}")
            assert answer.status_code == 200 and answer.json() == []
