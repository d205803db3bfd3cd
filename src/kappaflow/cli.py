"""The ``kappaflow`` command line."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
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
@click.option("--live", "live_only", is_flag=True, help="Only the apps' live versions.")
@click.option("--version", "versions", multiple=True, metavar="APP@N",
              help="Only this app version (repeatable).")  # fmt: skip
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
    live_only: bool,
    versions: tuple[str, ...],
    until_caught_up: bool,
    verbose: bool,
) -> None:
    """Process partitions of the apps' streams until stopped (SIGTERM or Ctrl-C: finish
    the batch, then exit). By default, every stream of every app version running: the
    apps of KAPPAFLOW_APPS and the versions deployed (kappaflow apps list).
    On Kafka without --partitions or --share-file, the consumer group assigns them
    (cooperative-sticky), as when KEDA scales worker pods. With worker_port set, serves
    /healthz and /metrics on it."""
    from kappaflow.app import load_apps
    from kappaflow.deployments import live, record, running
    from kappaflow.keys import watch
    from kappaflow.log import Log, open_log
    from kappaflow.metrics import declare
    from kappaflow.server.tls import server_context
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

        store = open_store(settings)
        apps = load_apps(settings)
        with closing(open_log(settings)) as the_log:
            recorded = record(settings, apps, store, the_log)
        apps = running(settings, store, apps, versions=recorded)
        if live_only:
            apps = live(apps, store, recorded)
        if versions:
            if unknown := set(versions).difference(app.ref for app in apps):
                ctx.fail(f"--version {', '.join(sorted(unknown))}: not running; running: "
                         f"{', '.join(app.ref for app in apps)}")  # fmt: skip
            apps = [app for app in apps if app.ref in versions]
        if app_name:
            apps = [a for a in apps if a.name == app_name]
            if not apps:
                ctx.fail(f"--app {app_name!r} is not among KAPPAFLOW_APPS {list(settings.apps)}")
        should_stop = stop_flag()
        if settings.worker_port:  # its settings checked before any consumer joins
            declare(apps)
            ring, _ = watch(settings, store)
            endpoints = WorkerEndpoints(
                settings.host, settings.worker_port, server_context(settings), ring
            )
            should_stop = endpoints.watching(should_stop)
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
@click.option("--pace-s", type=click.FloatRange(0, 60), default=2.0, show_default=True,
              help="Seconds over which to measure how fast a version that is not live "
              "catches up.")  # fmt: skip
@click.pass_context
def status(ctx: click.Context, data_dir: str | None, as_json: bool, pace_s: float) -> None:
    """Where each app stream stands, read from the log and the store: records appended
    and processed, lag and worker of each partition, dead letters, halted partitions,
    and the autoscalers' pools and last decisions (what the dashboard shows)."""
    import time

    import msgspec

    from kappaflow.deployments import running
    from kappaflow.query.dashboard import Pace
    from kappaflow.query.dashboard import status as read_status

    with _opened(ctx, "status", data_dir) as (settings, log, store):
        versions, pace = running(settings, store), Pace()
        found = read_status(versions, log, store, pace)
        if pace_s and any(s.lag and s.version_status != "live" for s in found.streams):
            time.sleep(pace_s)  # how fast the versions catch up
            found = read_status(versions, log, store, pace)
    if as_json:
        click.echo(msgspec.json.encode(found))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    for stream in found.streams:
        reasons = ", ".join(f"{kind} {n:,}" for kind, n in stream.dead_letters_by_reason.items())
        eta = stream.catch_up_s
        when = ("" if stream.version_status == "live" else "; not catching up" if eta is None
                else f"; caught up in {eta:,.0f} s, started {stream.started}")  # fmt: skip
        title = (f"{stream.app}@{stream.version} ({stream.version_status}{when}) · "
                 f"{stream.stream}: {stream.lag:,} behind, "
                 f"{stream.dead_letters:,} dead letters{f' ({reasons})' if reasons else ''}, "
                 f"{stream.workers} worker(s)")  # fmt: skip
        table = Table("partition", "appended", "processed", "lag", "worker", "halted", title=title)
        for p in stream.partitions:
            halted = "" if p.halted is None else f"at {p.halted.offset:,}: {p.halted.error}"
            table.add_row(str(p.partition), f"{p.appended:,}", f"{p.processed:,}",
                          f"{p.lag:,}", escape(p.worker or ""), escape(halted))  # fmt: skip
        Console().print(table)
    for pool in found.autoscaling.pools:
        paused = f", paused at {pool.paused}" if pool.paused is not None else ""
        active = "active" if pool.active else "inactive"
        click.echo(f"autoscaler of {pool.pool}: {pool.current} worker(s), {pool.desired} "
                   f"wanted; lag {pool.lag:,} (to the policy {pool.policy_lag:,}, threshold "
                   f"{pool.threshold:,}, {active}){paused}")  # fmt: skip
    for change in found.autoscaling.decisions[:5]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change.at))
        click.echo(f"  {at} {change.pool}: {change.previous} -> {change.replicas} workers; "
                   f"lag {change.lag:,}; {change.reason}")  # fmt: skip


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

    from kappaflow.dead_letters import listing
    from kappaflow.deployments import live, running
    from kappaflow.query.service import to_csv
    from kappaflow.store import open_store

    settings = _dead_letterload_settings(ctx, data_dir)
    with _failures_of(ctx, "dead-letters list"):
        store = open_store(settings)
        try:
            apps = live(running(settings, store), store)  # as GET /v1/dead-letters lists
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
    from kappaflow.dead_letters import plan_replay, replay
    from kappaflow.deployments import running
    from kappaflow.errors import LogUnavailable
    from kappaflow.log import open_log
    from kappaflow.store import open_store

    settings = _dead_letterload_settings(ctx, data_dir)
    if settings.log == "embedded" and not settings.log_path.is_dir():
        ctx.fail(f"no log in {settings.log_path}")
    with _failures_of(ctx, "dead-letters replay"):
        with closing(open_store(settings)) as store:
            apps = running(settings, store)  # every version: each would read a replay
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
def apps() -> None:
    """App versions side by side: deploy a new version beside the live one (it replays
    the log into tables of its own), promote it once it has caught up, roll back by
    promoting the old one, retire the old one (docs/change-an-app.md)."""


@contextmanager
def _opened(
    ctx: click.Context, command: str, data_dir: str | None, log: bool = True
) -> Iterator[Any]:
    """(settings, log, store) for ``kappaflow COMMAND``, without the log (None) unless
    ``log``; a `KappaflowError` (or no embedded log in the data directory) ends it as
    `_failures_of` says."""
    from kappaflow.log import open_log
    from kappaflow.store import open_store

    settings = load_settings(ctx, data_dir=data_dir)
    with _failures_of(ctx, command), contextlib.ExitStack() as opened:
        if log and settings.log == "embedded" and not settings.log_path.is_dir():
            raise KappaflowError(f"no log in {settings.log_path}")
        the_log = opened.enter_context(contextlib.closing(open_log(settings))) if log else None
        store = opened.enter_context(contextlib.closing(open_store(settings)))
        yield settings, the_log, store


def _ref(ctx: click.Context, param: click.Parameter, text: str) -> tuple[str, int]:
    from kappaflow.deployments import parse_ref

    try:
        return parse_ref(text)
    except KappaflowError as error:
        raise click.BadParameter(str(error)) from None


@apps.command("list")
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.option("--pace-s", type=click.FloatRange(0, 60), default=2.0, show_default=True,
              help="Seconds over which to measure how fast each version catches up.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")
@click.pass_context
def apps_list(ctx: click.Context, data_dir: str | None, pace_s: float, as_json: bool) -> None:
    """Every app version recorded: its status (live, deployed, retired), how many
    records it is behind, when it catches up at its pace, and where it started."""
    import time

    import msgspec

    from kappaflow.deployments import progress, running
    from kappaflow.query.dashboard import Pace

    pace = Pace()
    with _opened(ctx, "apps list", data_dir) as (settings, the_log, store):
        versions = running(settings, store)

        def stands() -> dict[str, tuple[int, float | None]]:
            """Each version's lag, and when it catches up at the pace seen so far."""
            return {p.version.ref: (p.lag, pace.catch_up_s(p.version.ref, p.lag, time.monotonic()))
                    for p in progress(versions, the_log, store)}  # fmt: skip

        now = stands()
        if pace_s and any(lag for lag, _ in now.values()):
            time.sleep(pace_s)
            now = stands()
        recorded = store.app_versions()
    rows = [
        {"app": v.ref, "status": v.status, "module": v.module, "note": v.note,
         "lag": now[v.ref][0] if v.ref in now else None,
         "eta_s": now[v.ref][1] if v.ref in now else None}
        for v in recorded
    ]  # fmt: skip
    if as_json:
        click.echo(msgspec.json.encode(rows))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("app", "status", "behind", "caught up in", "module", "started")
    for row in rows:
        lag, eta = row["lag"], row["eta_s"]
        behind = "" if lag is None else f"{lag:,}"
        when = "" if lag is None else "not catching up" if eta is None else f"{eta:,.0f} s"
        table.add_row(row["app"], row["status"], behind, when, escape(row["module"]),
                      escape(row["note"]))  # fmt: skip
    Console().print(table)


@apps.command("deploy")
@click.argument("ref", metavar="APP@N", callback=_ref)
@click.option("--module", help="The module whose create_app builds the version (default: "
              "the one of KAPPAFLOW_APPS that does).")  # fmt: skip
@click.option("--from", "from_time", metavar="TIME",
              help="Start at each partition's first event of this event time or later "
              "(unix seconds, or RFC 3339 with a zone) instead of the earliest.")  # fmt: skip
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def apps_deploy(
    ctx: click.Context,
    ref: tuple[str, int],
    module: str | None,
    from_time: str | None,
    data_dir: str | None,
) -> None:
    """Deploy app version APP@N beside the live one: its workers (kappaflow up starts
    them) process the log from its earliest records (or --from a time) into tables of
    its own, while the live version serves the queries."""
    from kappaflow.deployments import deploy, find
    from kappaflow.events.registry import check
    from kappaflow.query.params import valid_from_ms

    name, version = ref
    try:
        from_ms = None if from_time is None else valid_from_ms(from_time, "--from")
    except KappaflowError as error:
        raise click.BadParameter(str(error), param_hint="--from") from None
    with _opened(ctx, "apps deploy", data_dir) as (settings, the_log, store):
        app = find(settings, name, version, module)
        found = {v.ref: v for v in store.app_versions()}.get(app.ref)
        if found is not None and found.status != "retired":
            raise click.ClickException(f"{app.ref} is {found.status} already")
        check(the_log, app.streams)
        status = deploy(settings, app, store, the_log, from_ms)
        note = {v.ref: v for v in store.app_versions()}[app.ref].note
    click.echo(f"{app.ref} is {status}: its workers start {note}. `kappaflow apps list` shows "
               f"how far behind it is; `kappaflow apps promote {app.ref}` serves the queries "
               "from it once it has caught up.")  # fmt: skip


@apps.command("promote")
@click.argument("ref", metavar="APP@N", callback=_ref)
@click.option("--max-lag", type=click.IntRange(0), default=1000, show_default=True,
              help="Refuse while the version is more records behind than this.")  # fmt: skip
@click.option("--force", is_flag=True, help="Promote it however far behind it is.")
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def apps_promote(
    ctx: click.Context, ref: tuple[str, int], max_lag: int, force: bool, data_dir: str | None
) -> None:
    """Serve APP@N's queries (and OpenAPI document) from now on, in one step: each query
    reads one version or the other, never both. The version live until now runs on
    beside it: promoting it again rolls back."""
    from kappaflow.deployments import promote

    name, version = ref
    with _opened(ctx, "apps promote", data_dir) as (settings, the_log, store):
        stands = promote(settings, store, the_log, name, version, None if force else max_lag)
    click.echo(f"{name}@{version} is live ({stands.lag:,} records behind); the version live "
               f"before runs on for a roll-back until retired")  # fmt: skip


@apps.command("retire")
@click.argument("ref", metavar="APP@N", callback=_ref)
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def apps_retire(ctx: click.Context, ref: tuple[str, int], data_dir: str | None) -> None:
    """Stop APP@N's workers and drop its result tables, progress and dead letters; a
    live version is not retired (promote another first)."""
    from kappaflow.deployments import retire

    name, version = ref
    with _opened(ctx, "apps retire", data_dir) as (settings, _, store):
        app = retire(settings, store, name, version)
    click.echo(f"{app.ref} is retired: its tables are dropped and its workers stop")


@main.group()
def keys() -> None:
    """API keys: create one (its secret shown once), list them, revoke one."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for (shown by list).")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(["ingest", "query", "admin", "metrics"]),
              help="What it may do (repeatable).")  # fmt: skip
@click.option(
    "--stream",
    "streams",
    multiple=True,
    help="Only these streams for ingest (repeatable; default: every stream).",
)
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def keys_create(
    ctx: click.Context,
    name: str,
    scopes: tuple[str, ...],
    streams: tuple[str, ...],
    data_dir: str | None,
) -> None:
    """Create an API key and print its secret, once: the store keeps only its hash."""
    from kappaflow.keys import create

    with _opened(ctx, "keys create", data_dir, log=False) as (_, _, store):
        key, secret = create(store, name, scopes, streams)
    click.echo(f"key {key.id} ({key.name}): {', '.join(key.scopes)}"
               + (f" of {', '.join(key.streams)}" if key.streams else ""))  # fmt: skip
    click.echo(secret)
    click.echo("Keep the secret now: it is shown only this once.", err=True)


@keys.command("new-secret")
def keys_new_secret() -> None:
    """Print a new key's secret, kept nowhere: the admin key a deployment reads from a
    Secret (KAPPAFLOW_ADMIN_KEY)."""
    from kappaflow.keys import new_secret

    click.echo(new_secret())


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool, data_dir: str | None) -> None:
    """Every API key, without its secret: id, name, scopes, streams, when created and
    revoked."""
    from datetime import UTC, datetime

    import msgspec

    with _opened(ctx, "keys list", data_dir, log=False) as (_, _, store):
        found = [stored.key for stored in store.api_keys()]
    if as_json:
        click.echo(msgspec.json.encode(found))
        return
    from rich.console import Console
    from rich.table import Table

    def when(at: float | None) -> str:
        return "" if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")

    table = Table("id", "name", "scopes", "streams", "created", "revoked")
    for key in found:
        table.add_row(key.id, key.name, ", ".join(key.scopes), ", ".join(key.streams) or "all",
                      when(key.created_at), when(key.revoked_at))  # fmt: skip
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str, data_dir: str | None) -> None:
    """Revoke API key ID: every process refuses it within seconds."""
    from kappaflow.keys import RECHECK_S, revoke

    with _opened(ctx, "keys revoke", data_dir, log=False) as (_, _, store):
        key = revoke(store, key_id)
    click.echo(f"key {key.id} ({key.name}) is revoked: refused within {RECHECK_S:g} s")


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
    """The autoscaling policy (docs/autoscaling.md): simulate it, or pause a pool's."""


def pool_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--version APP@N``: the pool of a deployed app version, not the live versions'."""
    return click.option("--version", "pool", default="live", metavar="APP@N",
                        help="The pool of this deployed app version [default: the live "
                             "versions']")(command)  # fmt: skip


@scale.command("pause")
@click.argument("replicas", type=click.IntRange(0))
@pool_option
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def scale_pause(ctx: click.Context, replicas: int, pool: str, data_dir: str | None) -> None:
    """Hold a pool at REPLICAS workers until resumed, as KEDA's paused-replicas
    annotation does: its autoscaler scales it there at its next poll and decides nothing
    meanwhile."""
    with _opened(ctx, "scale pause", data_dir, log=False) as (_, _, store):
        _check_pool(ctx, store, pool)
        store.pause_scaling(pool, replicas)
    click.echo(f"pool {pool} paused at {replicas} worker(s); `kappaflow scale resume` ends it")


def _check_pool(ctx: click.Context, store: Any, pool: str) -> None:
    """A usage error unless ``pool`` is ``live`` or an app version deployed beside it."""
    deployed = [v.ref for v in store.app_versions() if v.status == "deployed"]
    if pool != "live" and pool not in deployed:
        known = ", ".join(deployed) or "none"
        message = f"no pool {pool!r}: `live`, or a deployed version ({known})"
        raise click.BadParameter(message, ctx, param_hint="--version")


@scale.command("resume")
@pool_option
@click.option("--data-dir", help="Directory of the embedded log and store.")
@click.pass_context
def scale_resume(ctx: click.Context, pool: str, data_dir: str | None) -> None:
    """Let a paused pool's autoscaler decide again."""
    with _opened(ctx, "scale resume", data_dir, log=False) as (settings, _, store):
        _check_pool(ctx, store, pool)
        if settings.scaling.paused_replicas is not None:
            ctx.fail(f"KAPPAFLOW_PAUSED_REPLICAS={settings.scaling.paused_replicas} pauses "
                     "every pool from start: unset it to resume")  # fmt: skip
        store.pause_scaling(pool, None)
    click.echo(f"pool {pool} resumed: its autoscaler decides again")


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

    from kappaflow.scale.policy import validate
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
    try:
        validate(policy)
    except KappaflowError as error:
        ctx.fail(str(error))
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
@click.pass_context
def replay(
    ctx: click.Context,
    path: str,
    url: str,
    stream: str,
    delay: float,
    speedup: float | None,
    batch: int,
) -> None:
    """Send a JSON-lines file (gzip accepted) into the ingest API, in order. Sends the
    key KAPPAFLOW_API_KEY gives; trusts the certificates of KAPPAFLOW_TLS_CA_FILE."""
    from pathlib import Path

    import httpx

    from kappaflow.client.replay import Replay, print_summary
    from kappaflow.server.tls import client_context

    settings = load_settings(ctx)
    try:
        summary = Replay(url, stream, delay, speedup, batch, settings.api_key,
                         client_context(settings)).run(Path(path))  # fmt: skip
    except httpx.HTTPError as failure:
        click.echo(f"kappaflow replay: cannot reach {url}: {failure}", err=True)
        sys.exit(1)
    except KappaflowError as failure:
        click.echo(f"kappaflow replay: {failure}", err=True)
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
