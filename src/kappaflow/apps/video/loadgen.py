"""Simulated viewers for ``kappaflow loadgen`` and the demo: heartbeats whose event
time follows the wall clock, never ahead of it."""

from __future__ import annotations

import time
from collections.abc import Iterator

from kappaflow.apps.video.events import Heartbeat
from kappaflow.apps.video.sim import HEARTBEAT_S, heartbeats


def simulated(viewers: int, seed: int, start_ms: int | None = None) -> Iterator[Heartbeat]:
    """Heartbeats of ``viewers`` simulated viewers from ``start_ms`` (default: now) on,
    with 1 s of jitter in delivery and 0.1% of client retries."""
    start_ms = int(time.time() * 1000) if start_ms is None else start_ms
    return heartbeats(viewers, seed, start_ms, jitter_ms=1_000, duplicates=0.001)


def viewers_for(rate: float, speed: float = 1.0) -> int:
    """How many viewers send ``rate`` heartbeats a second with event time running
    ``speed`` times as fast as the wall clock (each sends one per 5 s of event time)."""
    return max(1, round(rate * HEARTBEAT_S / speed))


def start_for(rate: float, viewers: int, duration: float) -> int:
    """Where the event time of a run starts (epoch ms) so that it never runs ahead of
    the wall clock: now, unless ``viewers`` send faster than real time (event time then
    runs ``rate * 5 / viewers`` times as fast), and then as far back as that gains."""
    speed = rate * HEARTBEAT_S / viewers
    return int((time.time() - duration * max(0.0, speed - 1)) * 1000)
