"""``kappaflow demo clicks``: replay the real 1.usa.gov sample into a running
stack, then show the top countries, browsers and target URLs from the query API, each
checked against a direct count over the file."""

from __future__ import annotations

import gzip
from collections import Counter
from importlib import resources
from pathlib import Path

import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from kappaflow.apps.clicks.app import Click, dimensions
from kappaflow.client.demo import wait_for_backlog
from kappaflow.client.replay import Replay
from kappaflow.settings import Settings
from kappaflow.up import Stack

console = Console(stderr=True)
SAMPLE = "usagov_bitly_2012-03-16.jsonl.gz"
SHOWN = (("country", "countries"), ("browser", "browsers"), ("url", "target URLs"))


def sample_path() -> Path:
    """The packaged sample of real click records."""
    return Path(str(resources.files("kappaflow.apps.clicks") / "data" / SAMPLE))


def count_file(path: Path) -> dict[str, Counter[str]]:
    """Clicks per dimension and value, counted straight from the file."""
    counts: dict[str, Counter[str]] = {}
    decoder = msgspec.json.Decoder(Click)
    with gzip.open(path) as lines:
        for line in lines:
            try:
                click = decoder.decode(line)
            except (msgspec.DecodeError, ValueError):
                continue
            for pair in dimensions(click):
                counts.setdefault(pair.dimension, Counter())[pair.value] += 1
    return counts


class ClicksDemo:
    def __init__(self, settings: Settings, stack: Stack) -> None:
        self.settings = settings
        self.stack = stack

    def run(self) -> bool:
        console.rule("[bold]kappaflow demo: 1.usa.gov clicks -> counts per minute and hour")
        path = sample_path()
        summary = Replay(self.stack.url, "clicks").run(path)
        console.print(
            f"replayed {summary.lines:,} real records in {summary.seconds:.1f} s "
            f"({summary.accepted:,} accepted, {len(summary.skipped)} bad lines skipped)"
        )
        drained = wait_for_backlog(self.settings, self.stack, timeout_s=60)
        console.print(f"backlog drained {drained:.1f} s after the replay")
        expected = count_file(path)
        ok = summary.accepted > 0
        with httpx.Client(base_url=self.stack.url, timeout=30) as client:
            for dimension, title in SHOWN:
                rows = client.get(
                    "/v1/clicks/counts", params={"dimension": dimension, "window": "1h"}
                ).json()
                got: Counter[str] = Counter()
                for row in rows:
                    got[row["value"]] += row["clicks"]
                table = Table(title=f"top {title}")
                table.add_column(dimension, overflow="fold")
                table.add_column("clicks", justify="right")
                for value, clicks in got.most_common(5):
                    table.add_row(value, f"{clicks:,}")
                console.print(table)
                ok = ok and got == expected[dimension]
            keepalives = sum(
                row["clicks"]
                for row in client.get(
                    "/v1/clicks/counts", params={"dimension": "keepalive", "window": "1h"}
                ).json()
            )
        console.print(f"keep-alive lines skipped and counted: {keepalives}")
        verdict = "[green]equal to" if ok else "[red]different from"
        console.print(f"every count shown: {verdict} a direct count over the file")
        return ok
