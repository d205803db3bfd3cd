"""The video app's commands: ``kappaflow catalog load``, ``kappaflow loadgen`` and
``kappaflow demo video`` (entry points in pyproject.toml). Each imports what it runs
only when it runs, so that ``kappaflow --help`` stays quick."""

from __future__ import annotations

import sys

import click

from kappaflow.cli import demo_options, load_settings
from kappaflow.errors import KappaflowError


@click.group()
def catalog() -> None:
    """The video catalog: videos, their license holders and royalty rates, ad slots."""


@catalog.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.option(
    "--valid-from",
    help="When the rows take effect (unix seconds, or an RFC 3339 time with a zone): "
         "sessions that start from then on read them; the catalog's earlier rows stay for "
         "earlier sessions, so a replay of the log gives the results computed live. "
         "Default: now.",
)  # fmt: skip
@click.pass_context
def catalog_load(
    ctx: click.Context, path: str, data_dir: str | None, valid_from: str | None
) -> None:
    """Add or replace videos and ad slots from a JSON or CSV file (all rows or none).

    JSON: {"videos": [...], "ad_slots": [...]}. CSV: a header of video columns
    (video_id,title,duration_s,license_holder,royalty_rate_per_minute) or of ad slot
    columns (video_id,position_s,advertiser,campaign).
    """
    from pathlib import Path

    from kappaflow.apps.video.catalog import load as load_catalog
    from kappaflow.apps.video.catalog import parse
    from kappaflow.errors import InvalidEvents, InvalidQuery
    from kappaflow.query.params import valid_from_ms as from_text
    from kappaflow.store import open_store

    settings = load_settings(ctx, data_dir=data_dir)
    try:
        valid_from_ms = None if valid_from is None else from_text(valid_from)
    except InvalidQuery as invalid:
        raise click.BadParameter(str(invalid), param_hint="--valid-from") from None
    content_type = "text/csv" if path.lower().endswith(".csv") else "application/json"
    try:
        parsed = parse(Path(path).read_bytes(), content_type)
        summary = load_catalog(open_store(settings), parsed, valid_from_ms)
    except InvalidEvents as invalid:
        for problem in invalid.problems:
            where = f"row {problem.index}" if problem.index is not None else "file"
            click.echo(f"{path}: {where}: {problem.field or ''}: {problem.reason}", err=True)
        click.echo(f"{path}: nothing was loaded", err=True)
        sys.exit(1)
    except KappaflowError as failure:
        click.echo(f"kappaflow catalog load: {failure}", err=True)
        sys.exit(1)
    click.echo(f"loaded {summary.videos} videos and {summary.ad_slots} ad slots")


@click.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Ingest URL.")
@click.option("--rate", default=10_000.0, show_default=True, help="Target events per second.")
@click.option(
    "--duration", default=60.0, show_default=True,
    help="Seconds to run; batches still refused (429, 503) then are dropped.",
)  # fmt: skip
@click.option(
    "--viewers", type=click.IntRange(min=1),
    help="Concurrent simulated viewers, each sending a heartbeat per 5 s of event time "
    "[default: as many as make event time follow the wall clock: rate x 5]. Fewer "
    "make event time run faster; it then starts in the past, so that it never runs "
    "ahead of the wall clock (an earlier run's later events of the same viewers make "
    "theirs late).",
)  # fmt: skip
@click.option("--batch", default=500, show_default=True, help="Events per request, at most.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the viewers.")
def loadgen(
    url: str, rate: float, duration: float, viewers: int | None, batch: int, seed: int
) -> None:
    """Post simulated viewers' heartbeats to an ingest service at a target rate."""
    from kappaflow.apps.video.loadgen import simulated, start_for, viewers_for
    from kappaflow.apps.video.sim import hb_ms
    from kappaflow.client.loadgen import LoadGenerator, encoded, print_summary

    viewers = viewers or viewers_for(rate)
    start_ms = start_for(rate, viewers, duration)
    batches = encoded(simulated(viewers, seed, start_ms), batch, hb_ms)
    summary = LoadGenerator(url, "heartbeats", rate, batches).run(duration, progress=True)
    print_summary(summary)
    sys.exit(0 if summary.rejected == summary.failed == summary.dropped == 0 else 1)


@click.command()
@click.option("--duration", default=60.0, show_default=True, help="Seconds of load.")
@click.option("--rate", default=20_000.0, show_default=True, help="Target events per second.")
@click.option("--viewers", default=3_000, show_default=True, help="Concurrent viewers.")
@demo_options
def demo(
    duration: float, rate: float, viewers: int, port: int | None, data_dir: str | None
) -> None:
    """Simulated viewers over HTTP, with a surge: progress, royalties and impressions
    checked against what the simulated players really played."""
    from kappaflow.apps.video.demo import Demo
    from kappaflow.client.demo import run_in_stack

    ok = run_in_stack(
        lambda settings, stack: Demo(settings, stack).run(duration, rate, viewers), port, data_dir
    )
    sys.exit(0 if ok else 1)
