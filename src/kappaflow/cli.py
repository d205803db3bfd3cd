"""The ``kappaflow`` command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import TYPE_CHECKING, Any

import click

from kappaflow.errors import KappaflowError
from kappaflow.query.params import parse_ranges
from kappaflow.settings import Settings
from kappaflow.signals import stop_flag

if TYPE_CHECKING:
    from kappaflow.app import App


def load_settings(ctx: click.Context, **overrides: Any) -> Settings:
    """The settings with ``overrides`` (options given), or a usage error naming the bad one."""
    try:
        return Settings.load(overrides=overrides)
    except KappaflowError as error:
        ctx.fail(str(error))


LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )


def parse_partitions(text: str | None) -> list[int] | None:
    """``0,2,5-7`` -> [0, 2, 5, 6, 7]."""
    if not text:
        return None
    try:
        return [p for low, high in parse_ranges(text) for p in range(low, high + 1)]
    except ValueError:
        message = f"expected numbers and ranges like 0,2,5-7, got {text!r}"
        raise click.BadParameter(message) from None


class Installed(click.Group):
    """A command group that also holds the commands installed apps register as entry
    points of the group ``entry_points`` (loaded when the command line is read)."""

    def __init__(self, *args: Any, entry_points: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entry_points = entry_points
        self.loaded = False

    def _load(self) -> None:
        if not self.loaded:
            self.loaded = True
            for entry in metadata.entry_points(group=self.entry_points):
                self.add_command(entry.load(), entry.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@click.group(cls=Installed, entry_points="kappaflow.commands")
@click.version_option(package_name="kappaflow")
def main() -> None:
    """kappaflow: autoscaling streaming analytics (log -> stream workers -> SQL).

    Settings come from KAPPAFLOW_* environment variables and the TOML file named by
    KAPPAFLOW_CONFIG; options given here take precedence.
    """


@main.command()
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.option("--app", "app_name", default=None, help="Only this app (default: all).")
@click.option("--stream", "stream_name", default=None, help="Only this stream of --app.")
@click.option("--partitions", help="Partitions to own, e.g. 0-3 or 0,2 (default: all).")
@click.option(
    "--share-file",
    type=click.Path(dir_okay=False),
    help="Own the partitions this file lists (a JSON list) and follow its changes "
    "between batches, as kappaflow up writes it.",
)
@click.option("--until-caught-up", is_flag=True, help="Exit once the backlog is processed.")
@click.option("-v", "--verbose", is_flag=True, help="Log each important event.")
@click.pass_context
def worker(
    ctx: click.Context,
    data_dir: str | None,
    app_name: str | None,
    stream_name: str | None,
    partitions: str | None,
    share_file: str | None,
    until_caught_up: bool,
    verbose: bool,
) -> None:
    """Process partitions of the apps' streams until stopped (SIGTERM or Ctrl-C: finish
    the batch, then exit). By default, every stream of every app in KAPPAFLOW_APPS.
    On Kafka without --partitions or --share-file, the consumer group assigns them
    (cooperative-sticky), as when KEDA scales worker pods. With worker_port set, serves
    /healthz and /metrics on it."""
    from kappaflow.app import load_apps
    from kappaflow.log import Log, open_log
    from kappaflow.metrics import declare
    from kappaflow.store import open_store
    from kappaflow.stream.assignment import Assignment, Fixed, KafkaGroup, Shares
    from kappaflow.stream.endpoints import WorkerEndpoints
    from kappaflow.stream.shares import ShareFile
    from kappaflow.stream.worker import Worker, run_workers

    _setup_logging(verbose)
    settings = load_settings(ctx, data_dir=data_dir)
    if partitions and share_file:
        raise click.UsageError("--partitions and --share-file exclude each other")
    try:
        shared: Assignment = Fixed(parse_partitions(partitions) or range(settings.partitions))
        if share_file:
            share = ShareFile(share_file)
            if (asked := share.changed()) is None:
                raise click.BadParameter(f"{share_file} does not exist", param_hint="--share-file")
            shared = Shares(share, asked)  # the process's share: every worker owns it
        grouped = settings.log == "kafka" and not partitions and not share_file

        def assignment(log: Log) -> Assignment:
            return KafkaGroup(log) if grouped else shared

        apps = load_apps(settings)
        if app_name:
            apps = [a for a in apps if a.name == app_name]
            if not apps:
                ctx.fail(f"--app {app_name!r} is not among KAPPAFLOW_APPS {list(settings.apps)}")
        store = open_store(settings)
        # A log each: on Kafka, each stream's worker is a member of its own group, with
        # a consumer of its own.
        runners = [
            Worker(app, stream, log, store, settings, assignment(log))
            for app in apps
            for stream in ([app.stream(stream_name)] if stream_name else app.streams)
            for log in [open_log(settings)]
        ]
        for runner in runners:
            runner.start()
        should_stop = stop_flag()
        if settings.worker_port:
            declare(apps)
            endpoints = WorkerEndpoints(settings.host, settings.worker_port)
            should_stop = endpoints.watching(should_stop)
        run_workers(runners, should_stop, until_caught_up=until_caught_up)
        # Leave the consumer groups now: their partitions move on at once, and the
        # rebalance callbacks run while the interpreter can still run them.
        for runner in runners:
            runner.log.close()
        store.close()
    except KappaflowError as error:
        click.echo(f"kappaflow worker: {error}", err=True)
        sys.exit(1)


def _serve(ctx: click.Context, roles: tuple[str, ...], **options: Any) -> None:
    from kappaflow.server.serve import serve

    _setup_logging(verbose=False)
    settings = load_settings(ctx, **options)
    try:
        serve(settings, roles)
    except KappaflowError as failure:
        click.echo(f"kappaflow {'+'.join(roles)}: {failure}", err=True)
        sys.exit(1)


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--data-dir", help="Directory of the embedded log and store."),
            click.option("--host", help="Address to listen on [default: 127.0.0.1]."),
            click.option("--port", type=int, help="Port to listen on [default: 8000]."),
        ]
    ):
        command = option(command)
    return command


@main.command()
@click.option(
    "--role", "roles", multiple=True, required=True, type=click.Choice(["ingest", "query"]),
    help="Role to serve; repeat to serve several from one process.",
)  # fmt: skip
@server_options
@click.pass_context
def serve(ctx: click.Context, roles: tuple[str, ...], **options: Any) -> None:
    """Serve the HTTP roles given (what `kappaflow up` runs)."""
    _serve(ctx, roles, **options)


@main.command()
@server_options
@click.pass_context
def ingest(ctx: click.Context, **options: Any) -> None:
    """Serve POST /v1/streams/{stream}/events (the log's one writer, when embedded)."""
    _serve(ctx, ("ingest",), **options)


@main.command()
@server_options
@click.pass_context
def query(ctx: click.Context, **options: Any) -> None:
    """Serve the apps' read queries."""
    _serve(ctx, ("query",), **options)


def _run_stack(ctx: click.Context, serve: bool, workers: int | None, **options: Any) -> None:
    settings = load_settings(ctx, **options)
    if workers is not None:
        settings = settings.replace(workers=workers, autoscale=False)
    from kappaflow.up import run_up

    _setup_logging(verbose=False)
    sys.exit(run_up(settings, serve=serve))


@main.command()
@server_options
@click.option("--workers", type=int, help="Run this many workers, without autoscaling.")
@click.pass_context
def up(ctx: click.Context, workers: int | None, **options: Any) -> None:
    """Run the whole stack on this machine: ingest and queries on one port, and workers
    scaled on lag (KAPPAFLOW_AUTOSCALE, KAPPAFLOW_LAG_THRESHOLD, ...).

    Stops cleanly on Ctrl-C or SIGTERM: acknowledged events are never lost.
    """
    _run_stack(ctx, True, workers, **options)


@main.command()
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.option("--workers", type=int, help="Run this many workers, without autoscaling.")
@click.pass_context
def autoscaler(ctx: click.Context, workers: int | None, data_dir: str | None) -> None:
    """Run the workers scaled on lag, without the HTTP services (a role of `up`)."""
    _run_stack(ctx, False, workers, data_dir=data_dir)


@main.command()
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.option("--json", "as_json", is_flag=True, help="Print GET /status's JSON instead.")
@click.pass_context
def status(ctx: click.Context, data_dir: str | None, as_json: bool) -> None:
    """Where each app stream stands, read from the log and the store: records appended
    and processed, lag and worker of each partition, dead letters, halted partitions
    (what the dashboard shows)."""
    import msgspec

    from kappaflow.app import load_apps
    from kappaflow.log import open_log
    from kappaflow.query.dashboard import status as read_status
    from kappaflow.store import open_store

    settings = load_settings(ctx, data_dir=data_dir)
    if settings.log == "embedded" and not settings.log_path.is_dir():
        click.echo(f"kappaflow status: no log in {settings.log_path}", err=True)
        sys.exit(1)
    try:
        log, store = open_log(settings), open_store(settings)
        try:
            found = read_status(load_apps(settings), log, store)
        finally:
            log.close()
            store.close()
    except KappaflowError as failure:
        click.echo(f"kappaflow status: {failure}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(msgspec.json.encode(found))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    for stream in found.streams:
        reasons = ", ".join(f"{kind} {n:,}" for kind, n in stream.dead_letters_by_reason.items())
        title = (f"{stream.app} · {stream.stream}: {stream.lag:,} behind, "
                 f"{stream.dead_letters:,} dead letters{f' ({reasons})' if reasons else ''}, "
                 f"{stream.workers} worker(s)")  # fmt: skip
        table = Table("partition", "appended", "processed", "lag", "worker", "halted", title=title)
        for p in stream.partitions:
            halted = "" if p.halted is None else f"at {p.halted.offset:,}: {p.halted.error}"
            table.add_row(str(p.partition), f"{p.appended:,}", f"{p.processed:,}",
                          f"{p.lag:,}", escape(p.worker or ""), escape(halted))  # fmt: skip
        Console().print(table)


@main.group("dead-letters")
def dead_letters() -> None:
    """Records the workers could not process (late, undecodable, refused by an app):
    list them, and replay them into their stream once the cause is fixed."""


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose dead letters: those of GET /v1/dead-letters."""
    for option in reversed(
        [
            click.option("--data-dir", help="Directory of the embedded log and store."),
            click.option("--stream", help="Only the dead letters of this stream."),
            click.option("--reason", help="Only those of this reason kind: the reason up to "
                         "its first colon (late, undecodable, or the app processor's word)."),
            click.option("--since", help="Only those dead-lettered at or after this time: "
                         "unix seconds, or RFC 3339 with a zone."),
            click.option("--partition", help="Only those of this partition."),
            click.option("--offsets", help="Only those at these offsets of --partition, "
                         "e.g. 10,12-15."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


def _dead_letterload_settings(ctx: click.Context, data_dir: str | None) -> Settings:
    settings = load_settings(ctx, data_dir=data_dir)
    if settings.store == "sqlite" and not settings.sqlite_path.exists():
        ctx.fail(f"no store at {settings.sqlite_path}: is --data-dir (or KAPPAFLOW_DATA_DIR) "
                 "the one kappaflow up ran with?")  # fmt: skip
    return settings


@contextmanager
def _failures_of(ctx: click.Context, command: str) -> Iterator[None]:
    """A wrong option (an `InvalidQuery`, whose message starts with the parameter's
    name) is a usage error; any other kappaflow error ends ``command`` with its message
    and exit code 1."""
    from kappaflow.errors import InvalidQuery

    try:
        yield
    except InvalidQuery as invalid:
        ctx.fail(f"--{invalid}")
    except KappaflowError as failure:
        click.echo(f"kappaflow {command}: {failure}", err=True)
        sys.exit(1)


def _selection(apps: Sequence[App], **options: Any) -> dict[str, Any]:
    """The options given, as the parameters of GET /v1/dead-letters, converted; raises
    `InvalidQuery` naming one that does not convert."""
    from kappaflow.dead_letters import params
    from kappaflow.query.params import read_params

    given = {name: str(value) for name, value in options.items() if value is not None}
    return read_params(params(apps), given)


@dead_letters.command("list")
@selection_options
@click.option(
    "--limit", default=100, show_default=True, help="At most this many, the newest first "
    "(up to 10,000).",
)  # fmt: skip
@click.option(
    "--format", "output", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="csv and json: what GET /v1/dead-letters answers.",
)  # fmt: skip
@click.pass_context
def dead_letters_list(
    ctx: click.Context, data_dir: str | None, output: str, **options: Any
) -> None:
    """List dead letters, the newest first.

    Each with its stream, partition, offset and reason, the record (its text when it is
    UTF-8, else base64) and when; read from the store, with or without the server
    running."""
    import msgspec

    from kappaflow.app import load_apps
    from kappaflow.dead_letters import listing
    from kappaflow.query.service import to_csv
    from kappaflow.store import open_store

    settings = _dead_letterload_settings(ctx, data_dir)
    with _failures_of(ctx, "dead-letters list"):
        apps, store = load_apps(settings), open_store(settings)
        try:
            found = listing(apps, store, _selection(apps, **options))
        finally:
            store.close()
    if output == "json":
        click.echo(msgspec.json.encode(found))
        return
    if output == "csv":
        click.echo(to_csv(found), nl=False)
        return
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(found):,} dead letter(s), the newest first")
    table.add_column("dead-lettered (UTC)", no_wrap=True)
    for name in ("stream", "partition", "offset"):
        table.add_column(name, justify="left" if name == "stream" else "right")
    table.add_column("reason", overflow="fold")
    table.add_column("record", max_width=60, no_wrap=True, overflow="ellipsis")
    for letter in found:
        when = datetime.fromtimestamp(letter.dead_lettered_at, UTC)
        record = letter.record if letter.encoding == "utf-8" else f"(base64) {letter.record}"
        table.add_row(when.strftime("%Y-%m-%d %H:%M:%S"), escape(letter.stream),
                      str(letter.partition), str(letter.offset), escape(letter.reason),
                      escape(record))  # fmt: skip
    Console().print(table)
    if len(found) == options["limit"]:
        click.echo(f"(the newest {len(found):,}: --limit shows more)")


@dead_letters.command("replay")
@selection_options
@click.pass_context
def dead_letters_replay(ctx: click.Context, data_dir: str | None, **options: Any) -> None:
    """Append a stream's dead letters to its log again.

    Once their cause is fixed (a client's clock, the app), the dead letters chosen
    (--stream is required) go back to the end of their partitions, and the workers
    process them again at new offsets. Each leaves the dead letters once it is durably
    in the log. On the embedded log, stop kappaflow up first: one process appends to
    it."""
    from kappaflow.app import load_apps
    from kappaflow.dead_letters import plan_replay, replay
    from kappaflow.errors import LogUnavailable
    from kappaflow.log import open_log
    from kappaflow.store import open_store

    settings = _dead_letterload_settings(ctx, data_dir)
    if settings.log == "embedded" and not settings.log_path.is_dir():
        ctx.fail(f"no log in {settings.log_path}")
    with _failures_of(ctx, "dead-letters replay"):
        apps = load_apps(settings)
        plan = plan_replay(apps, _selection(apps, **options))
        try:
            log = open_log(settings, writer=True)
        except LogUnavailable as held:
            if settings.log != "embedded":
                raise
            raise LogUnavailable(f"{held}: stop it (kappaflow up, or kappaflow ingest), replay, "
                                 "then start it again; its workers take the replayed "
                                 "records") from held  # fmt: skip
        store = open_store(settings)
        try:
            replayed = replay(log, store, plan)
        finally:
            log.close()
            store.close()
    if not replayed:
        click.echo(f"no dead letters of {plan.stream.name} match: nothing replayed")
        return
    by_partition = ", ".join(f"partition {p}: {n:,}" for p, n in replayed.items())
    click.echo(f"replayed {sum(replayed.values()):,} dead letter(s) of {plan.stream.name} to "
               f"its log ({by_partition}); the workers process them again")  # fmt: skip


@main.group()
def deploy() -> None:
    """Deployment files rendered from the settings."""


@deploy.command("render")
@click.option(
    "--target",
    type=click.Choice(["compose", "k8s"]),
    required=True,
    help="compose: deploy/compose.yaml; k8s: deploy/k8s/ (base and overlays).",
)
@click.option("--output", default="deploy", show_default=True, help="Directory to write to.")
@click.pass_context
def deploy_render(ctx: click.Context, target: str, output: str) -> None:
    """Write deploy/compose.yaml, or deploy/k8s/ (base and the dev and production
    overlays), from the KAPPAFLOW_* settings and the apps they name (each module must be
    importable here: KEDA gets a trigger, Strimzi a topic, per app stream)."""
    from pathlib import Path

    from kappaflow.deploy.render import compose, k8s_base, k8s_overlays, write

    settings = load_settings(ctx)
    try:
        if target == "compose":
            written = write({"compose.yaml": [compose(settings)]}, Path(output))
        else:
            written = write(k8s_base(settings), Path(output) / "k8s" / "base")
            for name, files in k8s_overlays(settings).items():
                written += write(files, Path(output) / "k8s" / "overlays" / name)
    except KappaflowError as error:
        click.echo(f"kappaflow deploy render: {error}", err=True)
        sys.exit(1)
    for path in written:
        click.echo(f"wrote {path}")


@main.group()
def scale() -> None:
    """The autoscaling policy (docs/autoscaling.md) away from a running stack."""


@scale.command("simulate")
@click.option(
    "--load",
    "load",
    default="surge",
    show_default=True,
    help="daily, surge, sawtooth, or a CSV file of time_s,events_per_s.",
)
@click.option("--capacity", type=float, required=True, help="Events/s one worker processes.")
@click.option(
    "--base", default=50_000.0, show_default=True, help="Base events/s of the built-in shapes."
)
@click.option("--step", default=15.0, show_default=True, help="Seconds between decisions.")
@click.option("--output", type=click.Path(dir_okay=False), help="PNG to write [scale-LOAD.png].")
@click.option("--rows", default=24, show_default=True, help="Rows of the printed table.")
@click.pass_context
def scale_simulate(
    ctx: click.Context, load: str, capacity: float, base: float, step: float,
    output: str | None, rows: int,
) -> None:  # fmt: skip
    """Replay a load curve through the policy and a capacity model: workers and lag
    over time, as a table and a picture. The policy's settings are the KAPPAFLOW_*
    ones (KAPPAFLOW_LAG_THRESHOLD, KAPPAFLOW_BEHAVIOR, ...)."""
    from pathlib import Path

    from kappaflow.scale.simulator import SHAPES, from_csv, plot, report, simulate

    settings = load_settings(ctx)
    if load in SHAPES:
        curve, duration = SHAPES[load](base)
    elif Path(load).is_file():
        try:
            curve, duration = from_csv(Path(load))
        except ValueError as error:
            ctx.fail(str(error))
    else:
        ctx.fail(f"--load must be one of {', '.join(SHAPES)} or a CSV file, got {load!r}")
    policy = settings.scaling
    steps = simulate(curve, duration, capacity, policy, settings.partitions, step)
    picture = Path(output or f"scale-{Path(load).stem}.png")
    title = (f"{Path(load).stem}: {capacity:,.0f} events/s per worker, lag threshold "
             f"{policy.lag_threshold:,}, {settings.partitions} partitions")  # fmt: skip
    try:
        plot(steps, capacity, title, picture)
    except KappaflowError as error:
        ctx.fail(str(error))
    report(steps, rows)
    click.echo(f"picture: {picture}")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Ingest URL.")
@click.option("--stream", required=True, help="Stream to send to.")
@click.option("--delay", default=0.0, show_default=True, help="Seconds between records.")
@click.option("--speedup", type=float, help="Replay at N times the pace of the records' `t`.")
@click.option("--batch", default=500, show_default=True, help="Records per request, at most.")
def replay(
    path: str, url: str, stream: str, delay: float, speedup: float | None, batch: int
) -> None:
    """Send a JSON-lines file (gzip accepted) into the ingest API, in order."""
    from pathlib import Path

    import httpx

    from kappaflow.client.replay import Replay, print_summary

    try:
        summary = Replay(url, stream, delay, speedup, batch).run(Path(path))
    except httpx.HTTPError as failure:
        click.echo(f"kappaflow replay: cannot reach {url}: {failure}", err=True)
        sys.exit(1)
    print_summary(summary)
    sys.exit(0 if summary.accepted else 1)


def demo_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every app's demo command: ``--port`` and ``--data-dir``."""
    for option in (
        click.option("--port", type=int, help="Port of the demo stack [default: a free one]."),
        click.option("--data-dir", help="Keep the data here instead of a temporary directory."),
    ):
        command = option(command)
    return command


@main.group(cls=Installed, entry_points="kappaflow.demos")
def demo() -> None:
    """Run the stack, load it over HTTP, and check the results against the ground truth:
    a command per app with a demo. Workers start at one and are scaled on lag, one per
    CPU at most."""
