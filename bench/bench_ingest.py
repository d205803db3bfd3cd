"""Ingest over HTTP on this machine: single-event requests per second (against a bare
ASGI app on the same uvicorn as the baseline) and events per second in NDJSON batches
of 1,000 (against writing the same bytes to a file with fsync). Load comes from a
separate process (bench/httpload.py); the server is one process on one core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
from common import Figure
from rich.console import Console

from kappaflow.apps.video.sim import heartbeats
from kappaflow.up import free_port

HERE = Path(__file__).resolve().parent
SECONDS = 8
CONNECTIONS = 32
BATCH = 1_000
console = Console()


def run(scale: float) -> list[Figure]:
    seconds = max(2, SECONDS * scale)
    console.print(f"{os.cpu_count()} CPUs; each measurement {seconds:.0f} s, "
                  f"{CONNECTIONS} connections from one load process")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        events = list(heartbeats(2_000, 1, 1_767_225_600_000, 1_767_225_600_000 + 2_000_000))
        encode = msgspec.json.encode
        singles = Path(tmp) / "singles"
        singles.write_bytes(b"\n\x00\n".join(encode(e) for e in events[:1_000]))
        batches = Path(tmp) / "batches"
        batch_bodies = [b"\n".join(encode(e) for e in events[i : i + BATCH])
                        for i in range(0, BATCH * 50, BATCH)]  # fmt: skip
        batches.write_bytes(b"\n\x00\n".join(batch_bodies))

        env = {"KAPPAFLOW_DATA_DIR": f"{tmp}/data", "KAPPAFLOW_INGEST_MAX_BACKLOG": "1000000000"}
        with server([sys.executable, "-m", "kappaflow", "ingest"], env) as port:
            single = load(port, "application/json", singles, seconds)
            batched = load(port, "application/x-ndjson", batches, seconds)
        bare_command = [
            *(sys.executable, "-m", "uvicorn", "bare_asgi:app", "--log-level", "warning"),
            *("--no-access-log", "--loop", "uvloop", "--http", "httptools"),
        ]
        with server(bare_command, {}, cwd=HERE) as port:
            bare = load(port, "application/json", singles, seconds)
        file_rate = fsync_rate(Path(tmp) / "raw", batch_bodies)

    single_rate = single["ok"] / single["seconds"]
    bare_rate = bare["ok"] / bare["seconds"]
    batched_rate = batched["ok"] * BATCH / batched["seconds"]
    console.print(f"single events: {single_rate:,.0f} requests/s (bare ASGI {bare_rate:,.0f}/s)")
    console.print(f"NDJSON batches of {BATCH}: {batched_rate:,.0f} events/s")
    return [
        Figure("ingest: single-event requests", single_rate, "requests/s",
               "bare ASGI app, same uvicorn", bare_rate),
        Figure(f"ingest: NDJSON batches of {BATCH}", batched_rate, "events/s",
               "same bytes to a file + fsync", file_rate),
    ]  # fmt: skip


class server:
    """Start a server process on a free port; stop it on exit."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
        )

    def __enter__(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return self.port
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server {self.process.args} did not start")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(30)


def load(port: int, content_type: str, bodies: Path, seconds: float) -> dict[str, float]:
    path = "/v1/streams/heartbeats/events"
    output = subprocess.run(
        [sys.executable, str(HERE / "httpload.py"), "127.0.0.1", str(port), path, content_type,
         str(bodies), str(seconds), str(CONNECTIONS)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result = json.loads(output)
    if result["ok"] != result["requests"]:
        raise AssertionError(f"{result['requests'] - result['ok']} requests were not accepted")
    return result


def fsync_rate(path: Path, bodies: list[bytes]) -> float:
    """Events/s of appending the batch bodies to one file with an fsync each."""
    started, written = time.perf_counter(), 0
    with path.open("ab") as file:
        while time.perf_counter() - started < 2:
            for body in bodies:
                file.write(body)
                file.flush()
                os.fdatasync(file.fileno())
                written += BATCH
    return written / (time.perf_counter() - started)
