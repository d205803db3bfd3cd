"""kappaflow.testing's wait helper."""

from __future__ import annotations

import itertools

import pytest

from kappaflow.testing import wait_until


def test_wait_until_returns_the_first_true_value() -> None:
    calls = itertools.count(1)
    assert wait_until(lambda: [n] if (n := next(calls)) >= 3 else [], 5, "a third call", 0) == [3]


def test_wait_until_fails_saying_what_did_not_happen_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"not within 0.05 s: the backlog drained \(last: 0\)"):
        wait_until(lambda: 0, 0.05, "the backlog drained", 0.01)
