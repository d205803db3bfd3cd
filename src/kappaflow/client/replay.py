"""``kappaflow replay FILE``: send a JSON-lines file (gzip or not) into the ingest API
in order, with a fixed delay between records or at N times the pace of their event
times, batching records that are due together, with the settings' ``api_key`` and
trusting their ``tls_ca_file``. Lines that are not a JSON object (truncated, binary
garbage) are reported with their line number and skipped; a key refused stops it."""

from __future__ import annotations

import gzip
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from kappaflow.errors import KappaflowError
from kappaflow.keys import bearer

console = Console(stderr=True)
MAX_RETRIES = 10


class KeyRefused(KappaflowError):
    """The ingest API refused the replay's API key (401) or its scope (403)."""


class _Timed(msgspec.Struct):
    t: float | None = None
    heartbeat: float | None = msgspec.field(default=None, name="_heartbeat_")


@dataclass
class ReplaySummary:
    lines: int = 0
    sent: int = 0
    accepted: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of lines not sent."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of records the ingest API refused."""
    seconds: float = 0.0


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(lines, raw file): the raw file's position tells the progress."""
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    raw.seek(0)
    return raw, raw


class Replay:
    def __init__(
        self,
        url: str,
        stream: str = "clicks",
        delay: float = 0.0,
        speedup: float | None = None,
        batch: int = 500,
        key: str = "",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``key``: the API key's secret sent, if any; ``verify``: what the server's
        certificate is checked against (httpx's ``verify``)."""
        self.endpoint = f"{url.rstrip('/')}/v1/streams/{stream}/events"
        self.headers = bearer(key)
        self.verify = verify
        self.delay = delay
        self.speedup = speedup
        self.batch = batch
        self._timed = msgspec.json.Decoder(_Timed)

    def _records(
        self, lines: BinaryIO, summary: ReplaySummary
    ) -> Iterator[tuple[int, bytes, float]]:
        """(line number, record, seconds after the start when it is due)."""
        first_t = None
        for number, line in enumerate(lines, start=1):
            summary.lines += 1
            record = line.strip()
            if not record:
                continue
            try:
                timed = self._timed.decode(record)
            except msgspec.DecodeError as error:
                reason = str(error) if record.startswith(b"{") else f"not a JSON object: {error}"
                summary.skipped.append((number, reason))
                continue
            if self.speedup:
                t = timed.t if timed.t is not None else timed.heartbeat
                if t is None:
                    summary.skipped.append((number, "no `t` to pace the replay by"))
                    continue
                first_t = t if first_t is None else first_t
                yield number, record, (t - first_t) / self.speedup
            else:
                yield number, record, (number - 1) * self.delay

    def run(self, path: Path, progress: bool = True) -> ReplaySummary:
        summary = ReplaySummary()
        lines, raw = _open(path)
        bar = Progress(TextColumn("[bold]replay"), BarColumn(), DownloadColumn(),
                       TextColumn("{task.description}"), TimeElapsedColumn(),
                       console=console, transient=True, disable=not progress)  # fmt: skip
        task = bar.add_task("", total=path.stat().st_size)
        started = time.perf_counter()
        pending: list[tuple[int, bytes]] = []
        with (
            httpx.Client(timeout=30, headers=self.headers, verify=self.verify) as client,
            bar,
            lines,
        ):
            for number, record, due in self._records(lines, summary):
                wait = due - (time.perf_counter() - started)
                if pending and (wait > 0 or len(pending) >= self.batch):
                    self._send(client, pending, summary)
                    pending = []
                    bar.update(task, completed=raw.tell(),
                               description=f"{summary.accepted:,} accepted")  # fmt: skip
                    wait = due - (time.perf_counter() - started)
                if wait > 0:
                    time.sleep(wait)
                pending.append((number, record))
            if pending:
                self._send(client, pending, summary)
        summary.seconds = time.perf_counter() - started
        return summary

    def _send(
        self, client: httpx.Client, records: list[tuple[int, bytes]], summary: ReplaySummary
    ) -> None:
        body = b"\n".join(record for _, record in records)
        headers = {"content-type": "application/x-ndjson"}
        summary.sent += len(records)
        for _ in range(MAX_RETRIES):
            answer = client.post(self.endpoint, content=body, headers=headers)
            if answer.status_code in (429, 503):
                time.sleep(float(answer.headers.get("retry-after", "1")))
                continue
            if answer.status_code == 202:
                summary.accepted += len(records)
                return
            if answer.status_code in (401, 403):
                raise KeyRefused(f"{answer.json()['error']} (KAPPAFLOW_API_KEY gives the key)")
            if answer.status_code == 400:
                self._resend_valid(client, records, answer.json(), summary)
                return
            break
        summary.rejected.extend(
            (n, f"HTTP {answer.status_code}: {answer.text}") for n, _ in records
        )

    def _resend_valid(
        self,
        client: httpx.Client,
        records: list[tuple[int, bytes]],
        refusal: dict[str, object],
        summary: ReplaySummary,
    ) -> None:
        """A 400 wrote nothing: note the refused records, send the others again."""
        problems = refusal.get("problems") or []
        bad = {}
        for problem in problems:  # type: ignore[attr-defined]
            if problem["index"] is not None:
                field_name = f"{problem['field']}: " if problem["field"] else ""
                bad[problem["index"]] = f"{field_name}{problem['reason']}"
        if not bad:
            summary.rejected.extend((n, str(refusal.get("error"))) for n, _ in records)
            return
        summary.rejected.extend((records[i][0], reason) for i, reason in sorted(bad.items()))
        summary.sent -= len(records)
        rest = [record for i, record in enumerate(records) if i not in bad]
        if rest:
            self._send(client, rest, summary)


def print_summary(summary: ReplaySummary) -> None:
    console.print(
        f"replayed {summary.lines:,} lines in {summary.seconds:.1f} s: "
        f"{summary.accepted:,} accepted, {len(summary.skipped):,} skipped, "
        f"{len(summary.rejected):,} refused by the API"
    )
    for number, reason in [*summary.skipped, *summary.rejected][:20]:
        console.print(f"  line {number}: {reason}")
