"""Resizing the workers under load: the worker pool of ``kappaflow up`` (`Stack`,
without the HTTP server) holds 50,000 viewers' open sessions and is fed 20,000
heartbeats/s, appended to the log 2,000 at a time; mid-stream it goes from 1 worker to
2, or from 2 to 1. A worker that stays hands partitions over or takes them on while it
runs (`Stack.resize`); the baseline stops every worker and starts the new pool
(``resize(0)``, then ``resize(n)``), as every resize did before. Figures, sampled every
20 ms: the longest time a partition with records waiting went without a commit, for
the partitions whose owner stayed and for those that moved, and the largest backlog."""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import START_MS, Figure
from rich.console import Console

from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.sim import heartbeats
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.up import Stack, shares

VIEWERS = 50_000
RATE = 20_000
"""Heartbeats appended per second while the pool runs."""
CHUNK = 2_000
BEFORE_S, AFTER_S = 5.0, 15.0
"""Seconds of load before the resize, and measured after it."""
SAMPLE_S = 0.02
PARTITIONS = 8
console = Console()


@dataclass
class Resize:
    """What a resize did to the partitions' progress."""

    kept_stall_s: float
    """Longest time without a commit, while records waited, of a partition whose owner stayed."""
    moved_stall_s: float
    """The same for a partition that changed owners."""
    peak_backlog: int


def run(scale: float) -> list[Figure]:
    viewers = max(5_000, int(VIEWERS * scale))
    prepared = viewers * 6  # 30 s of event time: every viewer has an open session
    live = int(RATE * (BEFORE_S + AFTER_S + 5))
    with console.status(f"simulating {prepared + live:,} heartbeats of {viewers:,} viewers"):
        stream = heartbeats(viewers, 0, START_MS, jitter_ms=1_000)
        events = list(itertools.islice(stream, prepared + live))
    figures = []
    for before, after in ((1, 2), (2, 1)):
        measured = {
            way: trial(events[:prepared], events[prepared:], before, after, way == "handover")
            for way in ("handover", "restart")
        }
        handover, restart = measured["handover"], measured["restart"]
        name = f"resize {before} -> {after} at {RATE:,}/s"
        baseline = "every worker restarted"
        figures += [
            Figure(f"{name}: stall, partitions kept", handover.kept_stall_s, "s", baseline,
                   restart.kept_stall_s),
            Figure(f"{name}: stall, partitions moved", handover.moved_stall_s, "s", baseline,
                   restart.moved_stall_s),
            Figure(f"{name}: peak backlog", handover.peak_backlog, "events", baseline,
                   restart.peak_backlog),
        ]  # fmt: skip
    return figures


def trial(prepared: list, live: list, before: int, after: int, handover: bool) -> Resize:
    way = "handover" if handover else "restart of every worker"
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as data:
        settings = Settings.load({}, {"data_dir": data, "partitions": PARTITIONS,
                                      "autoscale": False, "idle_timeout_s": 3600})  # fmt: skip
        app = create_app(settings)
        stream = app.streams[0]
        writer = open_log(settings, writer=True)
        appender = Appender(writer, stream, PARTITIONS)
        appender.append(prepared)
        chunks = [appender.encode(live[i : i + CHUNK]) for i in range(0, len(live), CHUNK)]
        stack = Stack(settings, quiet=True)
        progress = Progress(settings, stream.name, app.group(stream))
        try:
            with console.status(f"{before} -> {after}, {way}: restoring {len(prepared):,}"):
                stack.start(before, serve=False)
                progress.wait_caught_up(timeout_s=300)
            feeding = Feeder(lambda chunk: writer.append_partitions(stream.name, chunk), chunks)
            feeding.start()
            with console.status(f"{before} -> {after}, {way}: {RATE:,} heartbeats/s"):
                progress.sample_for(BEFORE_S)
                resized_at = time.monotonic()
                if not handover:
                    stack.resize(0)
                stack.resize(after)
                progress.sample_for(AFTER_S)
            feeding.stop()
        finally:
            stack.stop()
            writer.close()
            progress.close()
    stayed = {p for p in range(PARTITIONS) if owner(p, before) == owner(p, after)}
    result = Resize(
        progress.stall(resized_at, stayed),
        progress.stall(resized_at, set(range(PARTITIONS)) - stayed),
        progress.peak_backlog(resized_at),
    )
    console.print(
        f"{before} -> {after}, {way}: longest stall {result.kept_stall_s:.2f} s (kept), "
        f"{result.moved_stall_s:.2f} s (moved); peak backlog {result.peak_backlog:,}"
    )
    return result


def owner(partition: int, workers: int) -> int:
    return next(n for n, share in enumerate(shares(PARTITIONS, workers)) if partition in share)


class Feeder(threading.Thread):
    """Appends one chunk every ``CHUNK / RATE`` seconds, on a fixed schedule."""

    def __init__(self, append: Callable[[dict[int, list[bytes]]], None], chunks: list) -> None:
        super().__init__(daemon=True)
        self.append, self.chunks = append, chunks
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        for n, chunk in enumerate(self.chunks):
            if self.stopping.wait(max(0.0, started + n * CHUNK / RATE - time.monotonic())):
                return
            self.append(chunk)
        raise RuntimeError("the feeder ran out of heartbeats")

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class Progress:
    """Committed and end offsets of every partition, sampled."""

    def __init__(self, settings: Settings, stream: str, group: str) -> None:
        self.log, self.store = open_log(settings), open_store(settings)
        self.stream, self.group = stream, group
        self.samples: list[tuple[float, dict[int, int], dict[int, int]]] = []

    def sample(self) -> tuple[dict[int, int], dict[int, int]]:
        end = self.log.end_offsets(self.stream)
        committed = self.store.committed_offsets(self.group)
        self.samples.append((time.monotonic(), end, committed))
        return end, committed

    def wait_caught_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            end, committed = self.sample()
            if all(committed.get(p, 0) >= offset for p, offset in end.items()):
                self.samples.clear()
                return
            time.sleep(0.1)
        raise RuntimeError(f"the workers did not catch up within {timeout_s:.0f} s")

    def sample_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.sample()
            time.sleep(SAMPLE_S)

    def stall(self, since: float, partitions: set[int]) -> float:
        """The longest time one of ``partitions`` had records waiting and no commit,
        over stalls that ended after ``since``."""
        longest = 0.0
        for partition in partitions:
            waiting_since = None  # when records last waited with no commit since
            previous = None
            for at, end, committed in self.samples:
                done = committed.get(partition, 0)
                if previous is None or done != previous:
                    if waiting_since is not None and at >= since:
                        longest = max(longest, at - waiting_since)
                    waiting_since = at if end[partition] > done else None
                elif waiting_since is None and end[partition] > done:
                    waiting_since = at
                previous = done
            if waiting_since is not None:
                longest = max(longest, self.samples[-1][0] - waiting_since)
        return longest

    def peak_backlog(self, since: float) -> int:
        return max(
            sum(end[p] - committed.get(p, 0) for p in end)
            for at, end, committed in self.samples
            if at >= since
        )

    def close(self) -> None:
        self.log.close()
        self.store.close()
