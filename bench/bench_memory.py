"""Memory of open sessions: one worker's session state holding 1 million open
(user, video) sessions, measured in a fresh process (resident set size after the
state is built and the input dropped, and the size of its keyed state in the store)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import psutil
from common import START_MS, Figure
from rich.console import Console

from kappaflow.app import Batch
from kappaflow.apps.video.app import Heartbeat, create_app
from kappaflow.settings import Settings

SESSIONS = 1_000_000
GOAL_MIB = 1024
console = Console()


def run(scale: float) -> list[Figure]:
    sessions = max(1_000, round(SESSIONS * scale))
    with console.status(f"building {sessions:,} open sessions in a fresh process"):
        child = subprocess.run([sys.executable, __file__, str(sessions)], check=True,
                               capture_output=True, text=True)  # fmt: skip
    result = json.loads(child.stdout)
    state_mib = (result["rss"] - result["rss_before"]) / 2**20
    console.print(f"{sessions:,} open sessions: process RSS {result['rss'] / 2**20:,.0f} MiB "
                  f"({state_mib:,.0f} MiB for the state, {state_mib * 2**20 / sessions:,.0f} "
                  f"bytes a session), keyed state {result['stored'] / 2**20:,.0f} MiB")  # fmt: skip
    goal = ("goal", GOAL_MIB) if sessions == SESSIONS else (None, None)
    return [
        Figure(f"RSS with {sessions:,} open sessions", result["rss"] / 2**20, "MiB", *goal),
        Figure("session state per open session", state_mib * 2**20 / sessions, "bytes"),
        Figure(f"keyed state, {sessions:,} open sessions", result["stored"] / 2**20, "MiB"),
    ]


def build(sessions: int) -> dict[str, int]:
    """In this process: open ``sessions`` sessions, drop the input, measure."""
    processor = create_app(Settings.load({})).processors["heartbeats"]
    state = processor.initial_state()
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    chunk = 50_000
    for first in range(0, sessions, chunk):
        numbers = range(first, min(first + chunk, sessions))
        events = [event for n in numbers for event in opening(n)]
        times = [e.ts for e in events]
        # The watermark passes each key's due (its play + the 10 s gap), which folds both
        # of its events in and closes no session.
        offsets = list(range(2 * first, 2 * first + len(events)))
        output = processor.process(state, Batch(0, offsets, events, times, START_MS + 11_000))
        state = output.state
        del events, times, output
    gc.collect()
    rss = psutil.Process().memory_info().rss
    return {
        "rss_before": rss_before,
        "rss": rss,
        "stored": sum(map(len, processor.changed_keys(state).values())),
        "keys": len(state.keys),
    }


def opening(n: int) -> tuple[Heartbeat, Heartbeat]:
    """The play and the first heartbeat, 5 s later, of session ``n``."""
    user, video, ts = f"user-{n}", f"video-{n % 500}", START_MS + n % 1000
    return Heartbeat(user, video, 0.0, ts, "play"), Heartbeat(user, video, 5.0, ts + 5_000)


if __name__ == "__main__":
    print(json.dumps(build(int(sys.argv[1]))))
