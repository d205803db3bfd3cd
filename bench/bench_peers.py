"""Heartbeats -> watched segments on one generated file, in kappaflow (log + worker +
SQLite, as in bench_sessionize) and in two peer stream processors:

- Bytewax 0.21 in-process (``run_main``, one worker): an event-time clock with the
  allowed lateness, session windows with the session gap, and the segment rules over
  each closed window's events.
- Flink 2.3 SQL through PyFlink in its own venv (bench/.venv-flink, created on first
  use), as a subprocess running flink_sessions.py.

Each peer must produce kappaflow's multiset of (user, video, start_s, end_s) segments,
or the benchmark fails; a peer that cannot run is reported and skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import msgspec
from bench_sessionize import append_file, process, watched, write_heartbeats
from bytewax.connectors.files import FileSource
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, SessionWindower, collect_window
from bytewax.testing import TestingSink, run_main
from common import Figure, Segments, timed
from rich.console import Console

from kappaflow.apps.video.app import VideoSettings
from kappaflow.apps.video.events import KEY_SEPARATOR, KIND_RANK
from kappaflow.settings import Settings

HERE = Path(__file__).resolve().parent
FLINK_VENV = HERE / ".venv-flink"
FLINK = "apache-flink==2.3.0"
console = Console()


def run(scale: float) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        # Progress written on every change: open sessions' segments exact, as the peers'.
        settings = Settings.load({}, {"data_dir": tmp, "video_progress_accuracy_s": 0})
        path = Path(tmp) / "heartbeats.ndjson"
        events = write_heartbeats(path, scale)
        with console.status("appending to the log"):
            append_file(settings, path)
        with console.status("kappaflow: log + worker + SQLite"):
            expected, kappaflow_s = timed(lambda: process(settings))
        rate = events / kappaflow_s
        console.print(f"kappaflow: {rate:,.0f} events/s, {sum(expected.values()):,} segments")

        peers = {
            "Bytewax 0.21, 1 worker": lambda: bytewax_segments(path, settings),
            "PyFlink 2.3 SQL, parallelism 1": lambda: flink_segments(path, settings, Path(tmp)),
        }
        figures = []
        for peer, measure in peers.items():
            with console.status(f"{peer}: sessions and segments"):
                try:
                    segments, seconds = measure()
                except PeerUnavailable as error:
                    console.print(f"[red]{peer} not measured: {error}")
                    continue
            if segments != expected:
                difference = (segments - expected) + (expected - segments)
                raise AssertionError(f"{peer}'s segments differ, e.g. {list(difference)[:5]}")
            console.print(f"{peer}: {events / seconds:,.0f} events/s, same segments")
            figures.append(
                Figure("segments: log+worker+SQLite", rate, "events/s", peer, events / seconds)
            )
    return figures


class PeerUnavailable(Exception):
    """A peer could not run here; the message says why."""


class Beat(msgspec.Struct):
    """The fields of a heartbeat that the segments need."""

    user_id: str
    video_id: str
    position_s: float
    ts: int
    kind: str = "heartbeat"


def bytewax_segments(path: Path, settings: Settings) -> tuple[Segments, float]:
    """Run the Bytewax dataflow over the file; return its segments and seconds."""
    decoder = msgspec.json.Decoder(Beat)
    clock = EventClock(
        lambda item: datetime.fromtimestamp(item[0] / 1000, UTC),
        wait_for_system_duration=timedelta(seconds=settings.allowed_lateness_s),
        # Event times are not system times here: close windows on events and EOF only.
        to_system_utc=lambda _: None,
    )
    windower = SessionWindower(
        gap=timedelta(seconds=settings.app("video", VideoSettings).session_gap_s)
    )
    out: list[tuple[str, tuple[float, float]]] = []

    flow = Dataflow("segments")
    beats = op.map("decode", op.input("read", flow, FileSource(path)), decoder.decode)
    keyed = op.key_on("key", beats, lambda b: b.user_id + KEY_SEPARATOR + b.video_id)
    items = op.map_value("item", keyed, lambda b: (b.ts, KIND_RANK[b.kind], b.position_s))
    sessions = collect_window("sessions", items, clock, windower).down
    segments = op.flat_map_value(
        "segments",
        sessions,
        lambda window: watched(window[1], settings.app("video", VideoSettings).session_gap_s),
    )
    op.output("out", segments, TestingSink(out))

    _, seconds = timed(lambda: run_main(flow))
    return Counter((*key.split(KEY_SEPARATOR), *segment) for key, segment in out), seconds


def flink_segments(path: Path, settings: Settings, tmp: Path) -> tuple[Segments, float]:
    """Run flink_sessions.py in the Flink venv; return its segments and seconds."""
    python = FLINK_VENV / "bin" / "python"
    installed = FLINK_VENV / ".installed"
    if not installed.exists():
        console.print(f"creating {FLINK_VENV.relative_to(HERE.parent)} with {FLINK} (once, ~1 min)")
        _check([sys.executable, "-m", "venv", "--clear", str(FLINK_VENV)])
        _check([str(python), "-m", "pip", "install", "--quiet", FLINK])
        installed.touch()
    args = [
        path,
        tmp / "flink-segments",
        settings.app("video", VideoSettings).session_gap_s,
        settings.allowed_lateness_s,
    ]
    result = _check([str(python), str(HERE / "flink_sessions.py"), *map(str, args)])
    output = json.loads(result.splitlines()[-1])
    return Counter(tuple(row) for row in output["segments"]), output["seconds"]


def _check(command: list[str]) -> str:
    """Run ``command``; its stdout, or PeerUnavailable with the end of its stderr."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise PeerUnavailable(f"{command[0]}: {error}") from error
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line and line[0] not in " \t"]
        raise PeerUnavailable(f"{' '.join(command[:3])} failed: " + " | ".join(lines[-3:]))
    return done.stdout
