"""``kappaflow loadgen``: simulated viewers posting heartbeats over HTTP at a target
rate, batched per request like a client SDK. Refusals with ``Retry-After`` (429, 503)
are retried after the pause the server asks for; 400s are counted as rejected."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kappaflow.apps.video import Heartbeat
from kappaflow.apps.video_sim import hb_ms, heartbeats

console = Console(stderr=True)
SENDERS = 4


@dataclass
class Summary:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    """Events in requests answered 400 (never retried)."""
    failed: int = 0
    """Events given up on after connection errors."""
    retries: int = 0
    requests: int = 0
    seconds: float = 0.0
    codes: dict[int, int] = field(default_factory=dict)
    latest_ms: int = 0
    """Highest event time among the accepted events (the simulator's are epoch ms)."""

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


class LoadGenerator:
    def __init__(
        self,
        url: str,
        rate: float | Callable[[float], float],
        viewers: int = 2_000,
        batch: int = 500,
        seed: int = 0,
        events: Iterable[Heartbeat] | None = None,
        stream: str = "heartbeats",
    ) -> None:
        self.endpoint = f"{url.rstrip('/')}/v1/streams/{stream}/events"
        self.rate_at = rate if callable(rate) else (lambda _: rate)
        """Target events/s at a number of seconds into the run."""
        self.batch = batch
        if events is None:
            start_ms = int(time.time() * 1000)
            events = heartbeats(viewers, seed, start_ms, jitter_ms=1_000, duplicates=0.001)
        self.events: Iterator[Heartbeat] = iter(events)
        self.summary = Summary()
        self._encode = msgspec.json.Encoder().encode

    def run(
        self, duration: float | None = None, progress: bool = False, total: int | None = None
    ) -> Summary:
        """Send until ``duration`` seconds have passed or the events run out."""
        return asyncio.run(self._run(duration, progress, total))

    async def _run(self, duration: float | None, progress: bool, total: int | None) -> Summary:
        queue: asyncio.Queue[list[Heartbeat] | None] = asyncio.Queue(maxsize=SENDERS * 4)
        limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
        bar = Progress(
            TextColumn("[bold]loadgen"), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=console, transient=True, disable=not progress,
        )  # fmt: skip
        task = bar.add_task("", total=duration if duration else total)
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            senders = [asyncio.create_task(self._send(client, queue)) for _ in range(SENDERS)]
            with bar:
                due = 0.0
                for chunk in _chunks(self.events, self.batch):
                    elapsed = time.perf_counter() - started
                    if duration is not None and elapsed >= duration:
                        break
                    if due > elapsed:
                        await asyncio.sleep(due - elapsed)
                    await queue.put(chunk)
                    # At most a second of catching up after a stall, never a burst.
                    due = max(due, elapsed - 1.0) + len(chunk) / self.rate_at(due)
                    rate = self.summary.accepted / max(elapsed, 1e-9)
                    done = elapsed if duration else self.summary.accepted
                    bar.update(task, completed=done, description=f"{rate:,.0f} events/s")
                for _ in senders:
                    await queue.put(None)
                await asyncio.gather(*senders)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    async def _send(
        self, client: httpx.AsyncClient, queue: asyncio.Queue[list[Heartbeat] | None]
    ) -> None:
        s = self.summary
        headers = {"content-type": "application/json"}
        while (chunk := await queue.get()) is not None:
            body = self._encode(chunk)
            s.sent += len(chunk)
            for attempt in itertools.count():
                try:
                    response = await client.post(self.endpoint, content=body, headers=headers)
                except httpx.HTTPError:
                    if attempt >= 5:
                        s.failed += len(chunk)
                        break
                    s.retries += 1
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                s.requests += 1
                s.codes[response.status_code] = s.codes.get(response.status_code, 0) + 1
                if response.status_code in (429, 503):
                    s.retries += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                if response.status_code == 202:
                    s.accepted += len(chunk)
                    s.latest_ms = max(s.latest_ms, *map(hb_ms, chunk))
                else:
                    s.rejected += len(chunk)
                break


def _chunks(events: Iterator[Heartbeat], size: int) -> Iterator[list[Heartbeat]]:
    while chunk := list(itertools.islice(events, size)):
        yield chunk


def print_summary(summary: Summary) -> None:
    table = Table(title="loadgen", show_header=False)
    table.add_row("sent", f"{summary.sent:,} events in {summary.requests:,} requests")
    table.add_row("accepted", f"{summary.accepted:,}")
    table.add_row("rejected (400)", f"{summary.rejected:,}")
    table.add_row("failed (connection)", f"{summary.failed:,}")
    table.add_row("retried (429/503/errors)", f"{summary.retries:,}")
    table.add_row("achieved rate", f"{summary.rate:,.0f} events/s over {summary.seconds:.1f} s")
    table.add_row("answers", ", ".join(f"{c}: {n:,}" for c, n in sorted(summary.codes.items())))
    console.print(table)
