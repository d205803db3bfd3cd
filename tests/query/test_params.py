"""The query-string parameters the queries share, and the ranges the commands take."""

from __future__ import annotations

import click
import pytest

from kappaflow.cli import parse_partitions
from kappaflow.errors import InvalidQuery
from kappaflow.query.params import int_param, parse_ranges, ranges_param, time_param


def test_times_are_unix_seconds_or_rfc3339_with_a_zone() -> None:
    assert time_param({"since": "1800000000.5"}, "since") == 1_800_000_000.5
    assert time_param({"since": "2027-01-15T08:00:00Z"}, "since") == 1_800_000_000
    assert time_param({"since": "2027-01-15T09:00:00+01:00"}, "since") == 1_800_000_000
    assert time_param({"since": ""}, "since") is None is time_param({}, "since")
    for wrong in ("2027-01-15T08:00:00", "noon", "nan", "-inf"):
        with pytest.raises(InvalidQuery, match=f"since must be unix seconds or an RFC 3339 "
                           f"time, got '{wrong}'"):  # fmt: skip
            time_param({"since": wrong}, "since")


def test_integers_are_bounded() -> None:
    assert int_param({}, "limit", 100, 1, 10_000) == 100
    assert int_param({"limit": "10000"}, "limit", 100, 1, 10_000) == 10_000
    for wrong in ("0", "10001", "ten", "1.5", ""):
        with pytest.raises(InvalidQuery, match=f"limit must be an integer from 1 to 10000, "
                           f"got '{wrong}'"):  # fmt: skip
            int_param({"limit": wrong}, "limit", 100, 1, 10_000)


def test_ranges_are_numbers_and_inclusive_ranges() -> None:
    assert parse_ranges("0,2,5-7") == [(0, 0), (2, 2), (5, 7)]
    assert ranges_param({"offsets": "10-12"}, "offsets") == [(10, 12)]
    assert ranges_param({}, "offsets") == []
    for wrong in ("5-3", "-1", "1,,2", "a-b", "1-2-3"):
        with pytest.raises(ValueError):
            parse_ranges(wrong)
        with pytest.raises(InvalidQuery, match="offsets must be numbers and ranges like"):
            ranges_param({"offsets": wrong}, "offsets")


def test_partitions_of_a_worker_are_ranges_too() -> None:
    assert parse_partitions("0,2,5-7") == [0, 2, 5, 6, 7]
    assert parse_partitions("") is None
    with pytest.raises(click.BadParameter, match="expected numbers and ranges like 0,2,5-7"):
        parse_partitions("5-3")  # was no partition at all, so the worker took every one
