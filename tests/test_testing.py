"""kappaflow.testing's helpers: waiting for a condition, and `run_events`."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from kappaflow.app import App, Stream
from kappaflow.ops import Aggregate, Session, count
from kappaflow.settings import Settings
from kappaflow.testing import run_events, wait_until


def test_wait_until_returns_the_first_true_value() -> None:
    calls = itertools.count(1)
    assert wait_until(lambda: [n] if (n := next(calls)) >= 3 else [], 5, "a third call", 0) == [3]


def test_wait_until_fails_saying_what_did_not_happen_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"not within 0.05 s: the backlog drained \(last: 0\)"):
        wait_until(lambda: 0, 0.05, "the backlog drained", 0.01)


class View(msgspec.Struct):
    viewer: str
    ms: int


class Visit(msgspec.Struct):
    viewer: str
    start_ms: int
    end_ms: int
    views: int


def test_run_events_closes_the_sessions_a_worker_restored_without_events_since(
    settings: Settings,
) -> None:
    visits = Aggregate(Session(gap_ms=1_000), Visit, by="viewer", emit="final", views=count())
    views = Stream("views", View, key="viewer", time="ms")
    app = App("site", streams=[views], tables=[], processors={"views": visits})
    run_events(app, [View("ann", 1_000), View("ann", 1_500)], settings).close()
    store = run_events(app, [], settings, close=True)  # restored, then idle
    try:
        assert store.select(visits.table) == [Visit("ann", 1_000, 1_500, 2)]
    finally:
        store.close()
