"""``kappaflow demo video``: the whole stack from a user's point of view. In the demo
harness's stack, post simulated viewers' heartbeats over HTTP for about a minute
of accelerated viewing while a probe measures the time from ingest to queryable,
wait for the backlog to drain, check progress against the simulator's ground truth
(every pair in the store, a sample through the query API), print what happened."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from kappaflow.apps.video.app import NAME, Heartbeat, Progress, VideoSettings, all_progress
from kappaflow.apps.video.catalog import Catalog, index_slots, index_videos
from kappaflow.apps.video.reports import day_of, impressions, royalties
from kappaflow.apps.video.sim import HEARTBEAT_S, Truth, hb_ms, heartbeats, simulated_catalog
from kappaflow.client.demo import IDLE_S, Scaling, wait_for_backlog
from kappaflow.client.loadgen import LoadGenerator, Summary, encoded
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.up import Stack, one_machine

console = Console(stderr=True)
API_SAMPLE = 500
SEED = 7
SURGE = (0.35, 0.6, 3.0)
"""The load runs at 3x the rate from 35% to 60% of the run."""
GROUP = "video.heartbeats"
BATCH = 500
"""Heartbeats per request, as a client SDK might batch them."""
POLL_S = 0.02
"""How often the probe asks the query API whether its heartbeat shows."""


@dataclass
class Probe:
    """Posts one heartbeat at a time and measures until the query API shows it. Its
    event time is ``latest_ms()``: the latest the log holds, never ahead of it, so the
    probe does not raise its partition's watermark over heartbeats still on their way.
    It asks every ``POLL_S``, so a reading is at most that late; each question costs
    about a millisecond of CPU in the probe and the server, which asking more often
    would take from the stack being measured."""

    url: str
    latest_ms: Callable[[], int]
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for n in range(1_000_000):
                if self.stop.wait(0.2):
                    return
                user, position = f"probe-{n % 50}", float(n)
                event = Heartbeat(user, "probe", position, self.latest_ms())
                started = time.perf_counter()
                answer = client.post("/v1/streams/heartbeats/events", json=_plain(event))
                if answer.status_code != 202:
                    continue
                while not self.stop.is_set():
                    found = client.get(f"/v1/progress/{user}/probe")
                    if found.status_code == 200 and found.json()["resume_position_s"] == position:
                        self.latencies.append(time.perf_counter() - started)
                        break
                    time.sleep(POLL_S)


def _plain(event: Heartbeat) -> dict[str, object]:
    return {f: getattr(event, f) for f in event.__struct_fields__ if getattr(event, f) is not None}


class Demo:
    def __init__(self, settings: Settings, stack: Stack) -> None:
        self.settings = settings
        self.stack = stack
        self.url = stack.url

    def run(self, duration: float, rate: float, viewers: int) -> bool:
        console.rule("[bold]kappaflow demo: video heartbeats -> watched segments and progress")
        console.print(
            f"stack at {self.url}: ingest + queries, workers scaled on lag from 1 to "
            f"{one_machine(self.settings).scaling.max_replicas}, "
            f"{self.settings.partitions} partitions, data in {self.settings.data_dir}"
        )
        catalog = simulated_catalog(SEED)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            loaded = client.post("/v1/catalog", content=msgspec.json.encode(catalog),
                                 headers={"content-type": "application/json"})  # fmt: skip
            loaded.raise_for_status()
        console.print(
            f"catalog: {len(catalog.videos)} videos of "
            f"{len({v.license_holder for v in catalog.videos})} license holders, "
            f"{len(catalog.ad_slots)} ad slots"
        )
        truth: dict[tuple[str, str], Truth] = {}
        # Each viewer sends about one heartbeat per 5 s of event time while playing. The
        # viewing runs faster than real time, so it is played from as far in the past
        # as it lasts: it ends at the wall clock, and never runs ahead of it.
        end_ms = int(time.time() * 1000)
        start_ms = end_ms - int(rate * duration * HEARTBEAT_S * 1000 / viewers)
        events = heartbeats(viewers, SEED, start_ms, end_ms, 2_000, 0.005, truth=truth)
        surge_from, surge_to, factor = (duration * SURGE[0], duration * SURGE[1], SURGE[2])

        def rate_at(t: float) -> float:
            return rate * factor if surge_from <= t < surge_to else rate

        load = LoadGenerator(self.url, "heartbeats", rate_at, encoded(events, BATCH, hb_ms))
        probe = Probe(self.url, lambda: max(start_ms, load.summary.latest_ms))
        prober = threading.Thread(target=probe.run, daemon=True)
        prober.start()
        scaling = Scaling(self.settings, self.stack)
        scaler = threading.Thread(target=scaling.run, daemon=True)
        scaler.start()
        minutes = (end_ms - start_ms) / 60_000
        console.print(
            f"{viewers:,} viewers, {minutes:.0f} minutes of viewing each, sent at "
            f"{rate:,.0f} events/s for about {duration:.0f} s ({minutes * 60 / duration:.0f}x "
            f"faster than real time), with a surge to {rate * factor:,.0f} events/s from "
            f"{surge_from:.0f} s to {surge_to:.0f} s"
        )
        summary = load.run(progress=True)
        drained = wait_for_backlog(self.settings, self.stack, timeout_s=120)
        probe.stop.set()
        prober.join(10)
        self._wait_for_sessions_to_close(timeout_s=IDLE_S * 6)
        scaling.stop.set()
        scaler.join(10)
        scaling.report()
        ok = self._report(summary, drained, truth, probe.latencies)
        return self._report_money(truth, catalog, start_ms, end_ms) and ok

    def _wait_for_sessions_to_close(self, timeout_s: float) -> None:
        """Reports count closed sessions: wait until the idle timeout has closed every
        session that watched something (a resize restarts the idle clocks of the
        partitions it moves)."""
        store = open_store(self.settings)
        deadline = time.monotonic() + timeout_s
        try:
            with console.status("waiting for the idle timeout to close the last sessions"):
                while time.monotonic() < deadline:
                    still_open = store.query(
                        "SELECT count(*) FROM video_progress WHERE open_segments != '[]'"
                    )[0][0]
                    if not still_open:
                        return
                    time.sleep(0.5)
        finally:
            store.close()

    def _report_money(
        self, truth: dict[tuple[str, str], Truth], catalog: Catalog, start_ms: int, end_ms: int
    ) -> bool:
        """Top license holders and campaigns from the report API, against the same
        reports computed from the simulator's own record of what was played."""
        expected_money, expected_ads = expected_reports(truth, catalog, self.settings)
        days = {"from": day_of(start_ms - 86_400_000), "to": day_of(end_ms + 86_400_000)}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            royalties = client.get("/v1/reports/royalties", params=days).json()
            ads = client.get("/v1/reports/impressions", params=days).json()
        money: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in royalties:
            money[row["license_holder"]][0] += round(row["watched_s"] * 1000)
            money[row["license_holder"]][1] += round(row["amount"] * 1_000_000)
        shown: Counter[tuple[str, str]] = Counter()
        for row in ads:
            shown[row["advertiser"], row["campaign"]] += row["impressions"]
        holders = Table(title="top license holders (royalties report)")
        for column in ("license holder", "hours watched", "amount", "vs ground truth"):
            holders.add_column(column, justify="left" if column == "license holder" else "right")
        for holder, (watched_ms, micros) in sorted(money.items(), key=lambda m: -m[1][1])[:5]:
            holders.add_row(holder, f"{watched_ms / 3_600_000:,.1f}", f"{micros / 1e6:,.2f}",
                            _verdict(money[holder], expected_money.get(holder)))  # fmt: skip
        campaigns = Table(title="top campaigns (impressions report)")
        for column in ("advertiser", "campaign", "impressions", "vs ground truth"):
            campaigns.add_column(column, justify="right" if column == "impressions" else "left")
        for campaign_key, count in shown.most_common(5):
            verdict = _verdict(count, expected_ads.get(campaign_key))
            campaigns.add_row(*campaign_key, f"{count:,}", verdict)
        console.print(holders)
        console.print(campaigns)
        ok = dict(money) == expected_money and shown == expected_ads
        verdict = "[green]equal to" if ok else "[red]different from"
        console.print(f"reports of every holder and campaign: {verdict} the ground truth")
        return ok

    def _report(
        self,
        summary: Summary,
        drained_s: float,
        truth: dict[tuple[str, str], Truth],
        latencies: list[float],
    ) -> bool:
        store = open_store(self.settings)
        found = {(p.user_id, p.video_id): p for p in all_progress(store)}
        wrong = [key for key, t in truth.items() if not _matches(found.get(key), t)]
        sample = random.Random(1).sample(sorted(truth), min(API_SAMPLE, len(truth)))
        with httpx.Client(base_url=self.url, timeout=10) as client:
            wrong_api = [
                key for key in sample if not _matches(_api_progress(client, key), truth[key])
            ]
        reasons = store.dead_letter_counts(GROUP)
        segments = store.query("SELECT count(*) FROM video_segments")[0][0]
        store.close()
        watched_h = sum(p.watched_s for k, p in found.items() if k in truth) / 3600
        table = Table(title="what happened", show_header=False)
        table.add_row(
            "heartbeats ingested",
            f"{summary.accepted:,} in {summary.seconds:.1f} s ({summary.rate:,.0f} events/s), "
            f"{summary.requests:,} requests",
        )
        table.add_row(
            "refused / failed / retried",
            f"{summary.rejected:,} / {summary.failed:,} / {summary.retries:,}",
        )
        table.add_row("backlog drained", f"{drained_s:.1f} s after the last request")
        if latencies:
            p50 = statistics.median(latencies)
            p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else p50
            table.add_row(
                "ingest -> queryable",
                f"p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms ({len(latencies)} probes)",
            )
        table.add_row("(user, video) pairs", f"{len(truth):,}")
        table.add_row("closed segments", f"{segments:,}; {watched_h:,.1f} hours watched")
        table.add_row(
            "dead letters", ", ".join(f"{r}: {n:,}" for r, n in reasons.items()) or "none"
        )
        ok = not wrong and not wrong_api and summary.rejected == 0 and summary.failed == 0
        verdict = "[green]correct" if ok else f"[red]{len(wrong)} pairs differ"
        table.add_row(
            "vs ground truth",
            f"{verdict}: all {len(truth):,} pairs in the store, {len(sample)} through the API "
            f"({len(wrong_api)} differ)",
        )
        console.print(table)
        for key in (wrong or wrong_api)[:5]:
            console.print(f"  {key}: got {found.get(key)}, expected {truth[key]}")
        return ok


def _verdict(got: object, expected: object) -> str:
    return "[green]equal" if got == expected else f"[red]expected {expected}"


def expected_reports(
    truth: dict[tuple[str, str], Truth], catalog: Catalog, settings: Settings
) -> tuple[dict[str, list[int]], Counter[tuple[str, str]]]:
    """Royalties per holder [watched ms, amount micros] and impressions per campaign,
    from what the simulated players really played."""
    licences = index_videos([msgspec.structs.astuple(v) for v in catalog.videos])
    slots = index_slots([msgspec.structs.astuple(s) for s in catalog.ad_slots])
    money: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    ads: Counter[tuple[str, str]] = Counter()
    gap_ms = round(settings.app(NAME, VideoSettings).session_gap_s * 1000)
    for (_, video), record in truth.items():
        for session in record.sessions(gap_ms):
            for _, holder, watched_ms, micros in royalties(session, licences.get(video)):
                money[holder][0] += watched_ms
                money[holder][1] += micros
            for _, advertiser, campaign in impressions(session, slots.get(video, [])):
                ads[advertiser, campaign] += 1
    return dict(money), ads


def _api_progress(client: httpx.Client, key: tuple[str, str]) -> Progress | None:
    answer = client.get(f"/v1/progress/{key[0]}/{key[1]}")
    if answer.status_code != 200:
        return None
    body = answer.json()
    return Progress(body["user_id"], body["video_id"], body["resume_position_s"],
                    body["watched_s"], [])  # fmt: skip


def _matches(found: Progress | None, truth: Truth) -> bool:
    return (
        found is not None
        and abs(found.watched_s - truth.watched_s) < 1e-6
        and found.resume_position_s == truth.resume_position_s
    )
