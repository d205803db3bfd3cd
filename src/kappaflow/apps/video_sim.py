"""Simulated viewers for tests, benchmarks, the demo and the load generator.

Each of ``viewers`` concurrent players watches sessions back to back: it plays
from the start or from where that user stopped before, sends a heartbeat every
5 s, sometimes pauses, seeks or abandons, and stops at the end of the video. The
simulator records the ground truth (what was really played) beside the events,
and can deliver events slightly out of order and repeat some, as clients do.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from kappaflow.apps.video import Heartbeat, merge_intervals

HEARTBEAT_S = 5


@dataclass
class Truth:
    """What a (user, video) really played, and the position of its last event."""

    intervals: list[list[float]] = field(default_factory=list)
    resume_position_s: float = 0.0
    last_ms: int = -1

    @property
    def watched_s(self) -> float:
        return sum(end - start for start, end in merge_intervals(self.intervals))


@dataclass
class Workload:
    events: list[Heartbeat]
    """In delivery order."""
    truth: dict[tuple[str, str], Truth]


@dataclass
class ViewerModel:
    """Probabilities per 5-second step, and the shape of the catalog."""

    videos: int = 200
    users_per_viewer: int = 3
    pause: float = 0.01
    seek: float = 0.005
    abandon: float = 0.004
    resume: float = 0.5
    durations_s: tuple[int, int] = (120, 3600)


def simulate(
    events: int,
    viewers: int = 1000,
    seed: int = 0,
    start_ms: int = 1_767_225_600_000,
    jitter_ms: int = 0,
    duplicates: float = 0.0,
    model: ViewerModel | None = None,
) -> Workload:
    """About ``events`` heartbeats from ``viewers`` concurrent players. Delivery order
    is event time plus a random delay up to ``jitter_ms``; a ``duplicates`` fraction
    of events is delivered twice."""
    model = model or ViewerModel()
    rng = random.Random(seed)
    durations = [rng.randint(*model.durations_s) for _ in range(model.videos)]
    span_ms = events * HEARTBEAT_S * 1000 // max(viewers, 1)
    truth: dict[tuple[str, str], Truth] = {}
    timed: list[tuple[int, int, Heartbeat]] = []
    sequence = 0
    for viewer in range(viewers):
        users = [f"user-{viewer}-{n}" for n in range(model.users_per_viewer)]
        clock = start_ms + rng.randrange(HEARTBEAT_S * 1000)
        while clock < start_ms + span_ms:
            user = rng.choice(users)
            video = rng.randrange(model.videos)
            key = (user, f"video-{video}")
            record = truth.setdefault(key, Truth())
            for hb in _session(rng, model, key, durations[video], clock, record):
                sequence += 1
                delivery = hb_ms(hb) + (rng.randrange(jitter_ms + 1) if jitter_ms else 0)
                timed.append((delivery, sequence, hb))
                if duplicates and rng.random() < duplicates:
                    sequence += 1
                    timed.append((delivery + rng.randrange(jitter_ms + 1), sequence, hb))
                clock = hb_ms(hb)
            clock += rng.randint(10_000, 600_000)
    timed.sort(key=lambda entry: (entry[0], entry[1]))
    return Workload([hb for _, _, hb in timed], truth)


def hb_ms(event: Heartbeat) -> int:
    assert isinstance(event.ts, int)
    return event.ts


def _session(
    rng: random.Random,
    model: ViewerModel,
    key: tuple[str, str],
    duration: int,
    clock: int,
    truth: Truth,
) -> Iterator[Heartbeat]:
    user, video = key
    position = truth.resume_position_s if rng.random() < model.resume else 0.0
    if position >= duration:
        position = 0.0
    played_from = position

    def event(kind: str) -> Heartbeat:
        truth.resume_position_s, truth.last_ms = position, clock
        return Heartbeat(user, video, position, clock, kind)

    yield event("play")
    while True:
        step = min(HEARTBEAT_S, duration - position)
        clock += round(step * 1000)
        position += step
        if position >= duration:
            truth.intervals.append([played_from, position])
            yield event("stop")
            return
        roll = rng.random()
        if roll < model.abandon:
            # The player vanishes between heartbeats: the last one is all we know.
            truth.intervals.append([played_from, position])
            yield event("heartbeat")
            return
        if roll < model.abandon + model.pause:
            truth.intervals.append([played_from, position])
            yield event("pause")
            clock += rng.randint(3_000, 120_000)
            played_from = position
            yield event("play")
        elif roll < model.abandon + model.pause + model.seek:
            truth.intervals.append([played_from, position])
            yield event("heartbeat")
            clock += 200
            position = float(rng.randrange(duration))
            played_from = position
            yield event("seek")
        else:
            yield event("heartbeat")
