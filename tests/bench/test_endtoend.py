"""The end-to-end benchmark's load: the pool of heartbeats replayed lap after lap."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import msgspec

from kappaflow.apps.video.app import Heartbeat
from kappaflow.apps.video.sim import hb_ms, heartbeats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_endtoend import Pool, laps


def test_each_lap_is_the_pool_later_in_time_and_position() -> None:
    pool = list(itertools.islice(heartbeats(500, 3, 1_000_000, duplicates=0.01), 3_000))
    pool.append(Heartbeat('user "\\1', "v\u00e9", 2.25, 1_000_001, "seek", "e-1"))
    first, span = min(map(hb_ms, pool)), max(map(hb_ms, pool)) - min(map(hb_ms, pool))
    batches = list(itertools.islice(laps(Pool.of(pool), 9_000_000, 700), 15))
    sent = [msgspec.json.decode(b.body, type=list[Heartbeat]) for b in batches]
    assert [b.events for b in batches] == [len(events) for events in sent]
    assert [b.latest_ms for b in batches] == [max(map(hb_ms, events)) for events in sent]
    expected = [
        msgspec.structs.replace(
            e, ts=e.ts + 9_000_000 - first + lap * span, position_s=e.position_s + lap * span / 1000
        )
        for lap in range(3)
        for e in pool
    ]
    assert list(itertools.chain.from_iterable(sent)) == expected
