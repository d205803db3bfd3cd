"""The query-string parameters the queries share, and the ranges the commands take."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import click
import pytest
from msgspec import Meta

from kappaflow.app import Param
from kappaflow.cli import parse_partitions
from kappaflow.errors import InvalidQuery
from kappaflow.query.params import Ranges, UnixTime, parse_ranges, read_params, seconds

LIMIT = Param("at most this many", type=Annotated[int, Meta(ge=1, le=10_000)])


def test_times_are_unix_seconds_or_rfc3339_with_a_zone() -> None:
    since = {"since": Param("since then", type=UnixTime)}
    for given in ("1800000000", "1.8e9", "2027-01-15T08:00:00Z", "2027-01-15T09:00:00+01:00"):
        assert seconds(read_params(since, {"since": given})["since"]) == 1_800_000_000
    assert read_params(since, {}) == {}
    for wrong in ("2027-01-15T08:00:00", "noon", "nan", "-inf", "1e400", ""):
        with pytest.raises(InvalidQuery, match="since must be unix seconds or an RFC 3339 time "
                           f"with a zone, got '{wrong}'"):  # fmt: skip
            read_params(since, {"since": wrong})


def test_integers_are_bounded() -> None:
    assert read_params({"limit": LIMIT}, {"limit": "10000"}) == {"limit": 10_000}
    for wrong in ("0", "10001", "ten", "1.5", "", " 5", "05", "99999999999999999999999"):
        with pytest.raises(InvalidQuery, match=f"limit must be an integer from 1 to 10000, "
                           f"got '{wrong}'"):  # fmt: skip
            read_params({"limit": LIMIT}, {"limit": wrong})


def test_words_days_and_text_convert_and_others_stay_text() -> None:
    declared = {"window": Param("the window", type=Literal["1m", "1h"]),
                "from": Param("from this day", required=True, type=date),
                "holder": Param("this holder")}  # fmt: skip
    given = {"window": "1m", "from": "2026-01-31", "holder": "", "other": "x"}
    assert read_params(declared, given) == {**given, "from": date(2026, 1, 31)}
    for wrong, message in [
        ({"window": "1d", "from": "2026-01-31"}, "window must be one of 1h, 1m, got '1d'"),
        ({"from": "20260131"}, "from must be a day like 2026-01-31, got '20260131'"),
        ({"window": "1m"}, "from is required: a day like 2026-01-31"),
    ]:
        with pytest.raises(InvalidQuery, match=message):
            read_params(declared, wrong)


def test_ranges_are_numbers_and_inclusive_ranges() -> None:
    offsets = {"offsets": Param("at these offsets", type=Ranges)}
    assert parse_ranges("0,2,5-7") == [(0, 0), (2, 2), (5, 7)]
    assert read_params(offsets, {"offsets": "10-12"}) == {"offsets": "10-12"}
    for wrong in ("5-3", "-1", "1,,2", "a-b", "1-2-3"):
        with pytest.raises(ValueError):
            parse_ranges(wrong)
    for wrong in ("-1", "1,,2", "a-b", "1-2-3", "", "1" * 19, "٣"):
        with pytest.raises(InvalidQuery, match="offsets must be numbers and ranges like 0,2,5-7"):
            read_params(offsets, {"offsets": wrong})


def test_partitions_of_a_worker_are_ranges_too() -> None:
    assert parse_partitions("0,2,5-7") == [0, 2, 5, 6, 7]
    assert parse_partitions("") is None
    with pytest.raises(click.BadParameter, match="expected numbers and ranges like 0,2,5-7"):
        parse_partitions("5-3")  # was no partition at all, so the worker took every one
