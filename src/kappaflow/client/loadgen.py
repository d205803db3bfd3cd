"""Events posted over HTTP to one stream at a target rate, batched per request like a
client SDK. Refusals with ``Retry-After`` (429, 503)
are retried after the pause the server asks for, until the run's duration is up: a
batch still refused then is dropped, so that a run against a stack that cannot take
more still ends. 400s are counted as rejected. The generator posts `Batch`es encoded
beforehand (`encoded`), so that a caller can encode them faster than heartbeat by
heartbeat."""

from __future__ import annotations

import http.client
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
    dropped: int = 0
    """Events still refused (429, 503) when the run's duration was up."""
    retries: int = 0
    requests: int = 0
    seconds: float = 0.0
    codes: dict[int, int] = field(default_factory=dict)
    latest_ms: int = 0
    """Highest event time (epoch ms) among the accepted events."""

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


class Batch(NamedTuple):
    """One request's events."""

    body: bytes
    """A JSON array of events."""
    events: int
    latest_ms: int
    """The highest event time among them."""


def encoded(
    events: Iterable[msgspec.Struct], size: int, time_ms: Callable[[Any], int]
) -> Iterator[Batch]:
    """``events`` in batches of ``size`` (the last one may be smaller); ``time_ms`` gives
    an event's time in epoch milliseconds."""
    encode, events = msgspec.json.Encoder().encode, iter(events)
    while chunk := list(itertools.islice(events, size)):
        yield Batch(encode(chunk), len(chunk), max(map(time_ms, chunk)))


class LoadGenerator:
    def __init__(
        self,
        url: str,
        stream: str,
        rate: float | Callable[[float], float],
        batches: Iterable[Batch],
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"not an http:// URL: {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = f"{parts.path.rstrip('/')}/v1/streams/{stream}/events"
        self.rate_at = rate if callable(rate) else (lambda _: rate)
        """Target events/s at a number of seconds into the run."""
        self.batches = iter(batches)
        self.summary = Summary()
        self._counting = threading.Lock()

    def run(
        self, duration: float | None = None, progress: bool = False, total: int | None = None
    ) -> Summary:
        """Send until ``duration`` seconds have passed or the events run out; with a
        ``duration``, batches still refused then are dropped, not retried. ``SENDERS``
        threads post the batches, each on a keep-alive connection of its own (the
        standard library's client: a fifth of the CPU an asyncio httpx client takes per
        request, which would take from a stack on the same machine)."""
        batches: queue.Queue[Batch | None] = queue.Queue(maxsize=SENDERS * 4)
        bar = Progress(
            TextColumn("[bold]loadgen"), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=console, transient=True, disable=not progress,
        )  # fmt: skip
        task = bar.add_task("", total=duration if duration else total)
        started = time.perf_counter()
        end = started + duration if duration is not None else float("inf")
        senders = [threading.Thread(target=self._send, args=(batches, end)) for _ in range(SENDERS)]
        for sender in senders:
            sender.start()
        try:
            with bar:
                due = 0.0
                for batch in self.batches:
                    elapsed = time.perf_counter() - started
                    if duration is not None and elapsed >= duration:
                        break
                    if due > elapsed:
                        time.sleep(due - elapsed)
                    batches.put(batch)
                    # At most a second of catching up after a stall, never a burst.
                    due = max(due, elapsed - 1.0) + batch.events / self.rate_at(due)
                    rate = self.summary.accepted / max(elapsed, 1e-9)
                    done = elapsed if duration else self.summary.accepted
                    bar.update(task, completed=done, description=f"{rate:,.0f} events/s")
        finally:
            for _ in senders:
                batches.put(None)
            for sender in senders:
                sender.join()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _send(self, batches: queue.Queue[Batch | None], end: float) -> None:
        """Post ``batches`` until a None; a refusal is retried until ``end``
        (`time.perf_counter`), then dropped."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"content-type": "application/json"}
        try:
            while (batch := batches.get()) is not None:
                self._count(sent=batch.events)
                for attempt in itertools.count():
                    try:
                        connection.request("POST", self.path, batch.body, headers)
                        response = connection.getresponse()
                        response.read()
                    except (OSError, http.client.HTTPException):
                        connection.close()  # the next request opens it again
                        if attempt >= 5:
                            self._count(failed=batch.events)
                            break
                        self._count(retries=1)
                        time.sleep(0.2 * 2**attempt)
                        continue
                    status = response.status
                    self._count(requests=1, code=status)
                    if status in (429, 503):
                        if time.perf_counter() >= end:
                            self._count(dropped=batch.events)
                            break
                        self._count(retries=1)
                        time.sleep(float(response.getheader("retry-after", "1")))
                        continue
                    if status == 202:
                        self._count(accepted=batch.events, latest_ms=batch.latest_ms)
                    else:
                        self._count(rejected=batch.events)
                    break
        finally:
            connection.close()

    def _count(self, code: int | None = None, latest_ms: int = 0, **added: int) -> None:
        """Add to the summary's counters (the senders share it)."""
        s = self.summary
        with self._counting:
            for name, value in added.items():
                setattr(s, name, getattr(s, name) + value)
            if code is not None:
                s.codes[code] = s.codes.get(code, 0) + 1
            s.latest_ms = max(s.latest_ms, latest_ms)


def print_summary(summary: Summary) -> None:
    table = Table(title="loadgen", show_header=False)
    table.add_row("sent", f"{summary.sent:,} events in {summary.requests:,} requests")
    table.add_row("accepted", f"{summary.accepted:,}")
    table.add_row("rejected (400)", f"{summary.rejected:,}")
    table.add_row("failed (connection)", f"{summary.failed:,}")
    table.add_row("dropped (refused at the end)", f"{summary.dropped:,}")
    table.add_row("retried (429/503/errors)", f"{summary.retries:,}")
    table.add_row("achieved rate", f"{summary.rate:,.0f} events/s over {summary.seconds:.1f} s")
    table.add_row("answers", ", ".join(f"{c}: {n:,}" for c, n in sorted(summary.codes.items())))
    console.print(table)
