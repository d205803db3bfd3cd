"""Simulated viewers for tests, benchmarks, the demo and the load generator.

Each of ``viewers`` concurrent players watches sessions back to back: it plays
from the start or from where that user stopped before, sends a heartbeat every
5 s, sometimes pauses, seeks or abandons, and stops at the end of the video. The
simulator records the ground truth (what was really played) beside the events,
and can deliver events slightly out of order and repeat some, as clients do.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from kappaflow.apps.video.app import Heartbeat, merge_intervals
from kappaflow.apps.video.catalog import AdSlot, Catalog, Video

HEARTBEAT_S = 5


@dataclass
class Truth:
    """What a (user, video) really played, and the position of its last event."""

    intervals: list[list[float]] = field(default_factory=list)
    plays: list[tuple[float, float, int, int]] = field(default_factory=list)
    """(from_s, to_s, from_ms, to_ms) of each stretch played, in time order."""
    resume_position_s: float = 0.0
    last_ms: int = -1

    @property
    def watched_s(self) -> float:
        return sum(end - start for start, end in merge_intervals(self.intervals))

    def sessions(self, gap_ms: int) -> list[list[tuple[float, float, int, int]]]:
        """The plays grouped into viewing sessions: a new one after more than
        ``gap_ms`` without an event. Zero-length plays are left out."""
        sessions: list[list[tuple[float, float, int, int]]] = []
        last_ms = None
        for play in self.plays:
            if last_ms is None or play[2] - last_ms > gap_ms:
                sessions.append([])
            if play[1] > play[0]:
                sessions[-1].append(play)
            last_ms = play[3]
        return [session for session in sessions if session]


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
    """About ``events`` heartbeats from ``viewers`` concurrent players, all in memory."""
    truth: dict[tuple[str, str], Truth] = {}
    end_ms = start_ms + events * HEARTBEAT_S * 1000 // max(viewers, 1)
    stream = heartbeats(viewers, seed, start_ms, end_ms, jitter_ms, duplicates, model, truth)
    return Workload(list(stream), truth)


def heartbeats(
    viewers: int,
    seed: int,
    start_ms: int,
    end_ms: int | None = None,
    jitter_ms: int = 0,
    duplicates: float = 0.0,
    model: ViewerModel | None = None,
    truth: dict[tuple[str, str], Truth] | None = None,
) -> Iterator[Heartbeat]:
    """The viewers' heartbeats in delivery order, lazily: event time plus a random
    delay up to ``jitter_ms``; a ``duplicates`` fraction is delivered twice. Players
    stop at ``end_ms`` (never, if None); ``truth`` receives what they played."""
    model = model or ViewerModel()
    truth = {} if truth is None else truth
    rng = random.Random(seed)
    durations = [rng.randint(*model.durations_s) for _ in range(model.videos)]
    players = [
        _viewer(random.Random(f"{seed}-{n}"), model, n, durations, start_ms, end_ms, truth)
        for n in range(viewers)
    ]
    pending: list[tuple[int, int, Heartbeat]] = []
    sequence = 0
    for hb in heapq.merge(*players, key=hb_ms):
        while pending and pending[0][0] <= hb_ms(hb):
            yield heapq.heappop(pending)[2]
        copies = 2 if duplicates and rng.random() < duplicates else 1
        for _ in range(copies):
            sequence += 1
            delay = rng.randrange(jitter_ms + 1) if jitter_ms else 0
            heapq.heappush(pending, (hb_ms(hb) + delay, sequence, hb))
    while pending:
        yield heapq.heappop(pending)[2]


def _viewer(
    rng: random.Random,
    model: ViewerModel,
    number: int,
    durations: list[int],
    clock: int,
    end_ms: int | None,
    truth: dict[tuple[str, str], Truth],
) -> Iterator[Heartbeat]:
    """One player's sessions back to back, in event-time order."""
    users = [f"user-{number}-{n}" for n in range(model.users_per_viewer)]
    clock += rng.randrange(HEARTBEAT_S * 1000)
    while end_ms is None or clock < end_ms:
        video = rng.randrange(model.videos)
        key = (rng.choice(users), f"video-{video}")
        record = truth.setdefault(key, Truth())
        yield from _session(rng, model, key, durations[video], clock, end_ms, record)
        clock = record.last_ms + rng.randint(10_000, 600_000)


def hb_ms(event: Heartbeat) -> int:
    assert isinstance(event.ts, int)
    return event.ts


def _session(
    rng: random.Random,
    model: ViewerModel,
    key: tuple[str, str],
    duration: int,
    clock: int,
    end_ms: int | None,
    truth: Truth,
) -> Iterator[Heartbeat]:
    user, video = key
    position = truth.resume_position_s if rng.random() < model.resume else 0.0
    if position >= duration:
        position = 0.0
    played_from, since_ms = position, clock

    def played() -> None:
        truth.intervals.append([played_from, position])
        truth.plays.append((played_from, position, since_ms, clock))

    def event(kind: str) -> Heartbeat:
        truth.resume_position_s, truth.last_ms = position, clock
        return Heartbeat(user, video, position, clock, kind)

    yield event("play")
    while True:
        step = min(HEARTBEAT_S, duration - position)
        if end_ms is not None and clock + HEARTBEAT_S * 1000 > end_ms:
            # The simulation ends: as if the player vanished after its last event.
            played()
            return
        clock += round(step * 1000)
        position += step
        if position >= duration:
            played()
            yield event("stop")
            return
        roll = rng.random()
        if roll < model.abandon:
            # The player vanishes between heartbeats: the last one is all we know.
            played()
            yield event("heartbeat")
            return
        if roll < model.abandon + model.pause:
            played()
            yield event("pause")
            clock += rng.randint(3_000, 120_000)
            played_from, since_ms = position, clock
            yield event("play")
        elif roll < model.abandon + model.pause + model.seek:
            played()
            yield event("heartbeat")
            clock += 200
            position = float(rng.randrange(duration))
            played_from, since_ms = position, clock
            yield event("seek")
        else:
            yield event("heartbeat")


def simulated_catalog(seed: int = 0, model: ViewerModel | None = None) -> Catalog:
    """A catalog of the simulator's videos: a few license holders with their rates, and
    ad slots (pre-roll at 0 s, mid-rolls) of a few advertisers' campaigns. Ten videos
    are left out, as a catalog behind the content would be."""
    model = model or ViewerModel()
    rng = random.Random(seed)
    durations = [rng.randint(*model.durations_s) for _ in range(model.videos)]
    holders = [f"studio-{n}" for n in range(8)]
    rates = {holder: rng.choice([0.002, 0.005, 0.01, 0.02]) for holder in holders}
    campaigns = [(f"brand-{a}", f"brand-{a}-campaign-{c}") for a in range(5) for c in range(2)]
    videos, slots = [], []
    for number, duration in enumerate(durations[10:], start=10):
        holder = rng.choice(holders)
        video_id = f"video-{number}"
        videos.append(Video(video_id, f"Title {number}", duration, holder, rates[holder]))
        positions = [0.0, *(float(rng.randrange(duration)) for _ in range(rng.randint(0, 3)))]
        for position in sorted(set(positions)):
            slots.append(AdSlot(video_id, position, *rng.choice(campaigns)))
    return Catalog(videos, slots)
