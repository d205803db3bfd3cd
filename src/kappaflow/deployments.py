"""App versions side by side, the Kappa architecture's way to change a computation: a
new version of an app reads its streams from the log's earliest retained records, in
consumer groups of its own, into result tables of its own (`App.stored_name`), while
the live version serves every query. Once it has caught up it is promoted (the queries
switch to it in one store transaction), and the old version runs on beside it, ready
for a roll-back, until it is retired (its workers stop, its tables are dropped).

The store records each version (`AppVersion`) with its module, so that every process
runs and serves the versions deployed since it started. The apps the settings name are
recorded as a process starts: an app's first version is live, a later one deployed."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec

from kappaflow.app import App, Stream, app_modules, build_app, load_apps
from kappaflow.errors import AppError, KappaflowError
from kappaflow.events.records import untagged
from kappaflow.log.base import Log, once_known
from kappaflow.metrics import partition_offsets
from kappaflow.settings import Settings
from kappaflow.store.base import AppStatus, AppVersion, Store
from kappaflow.store.tables import R, Table, renamed, with_histories

log = logging.getLogger("kappaflow.deployments")

REF = re.compile(r"(?P<app>[a-z_][a-z0-9_]*)@(?P<version>[1-9][0-9]*)")
FROM_START = "from the log's earliest records"
SCAN_RECORDS = 10_000
"""Records read at a time looking for where an event time starts (`first_at`)."""


def parse_ref(text: str) -> tuple[str, int]:
    """``video@2`` -> (``video``, 2); `AppError` if it is not such."""
    found = REF.fullmatch(text)
    if found is None:
        raise AppError(f"{text!r} names no app version: write the app's name, @ and the "
                       "version, such as video@2")  # fmt: skip
    return found["app"], int(found["version"])


def record(settings: Settings, apps: Sequence[App], store: Store, the_log: Log) -> list[AppVersion]:
    """Record each of ``apps`` (the settings') that the store does not know yet, as
    `deploy` does (a store from before versions keeps its progress); returns every
    version recorded then."""
    recorded = store.app_versions()
    known = {(v.app, v.version) for v in recorded}
    new = [app for app in apps if (app.name, app.version) not in known]
    for app in new:
        status = deploy(settings, app, store, the_log)
        log.info("recorded %s: %s", app.ref, status)
    return store.app_versions() if new else recorded


def deploy(
    settings: Settings, app: App, store: Store, the_log: Log, from_ms: int | None = None
) -> AppStatus:
    """Record ``app`` deployed, and create its tables; live if its app has no live
    version. Returns its status. Its workers start at the log's earliest records (those
    retention left; the version's note says which it deleted), or with ``from_ms``, at
    each partition's first record of that event time or later (`first_at`)."""
    starts, gone = {}, []
    for stream in app.streams:
        the_log.create_topic(stream.name, settings.partitions)
        first = once_known(partial(the_log.start_offsets, stream.name))
        starts[app.group(stream)] = first if from_ms is None else first_at(
            the_log, stream, first, from_ms)  # fmt: skip
        gone += [f"{stream.name} partition {p} below {o:,}" for p, o in sorted(first.items()) if o]
    if from_ms is not None:
        moment = datetime.fromtimestamp(from_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
        note = f"from each partition's first record of event time {moment} or later"
    else:
        deleted = f": retention had deleted {', '.join(gone)}, which it never saw" if gone else ""
        note = FROM_START + deleted
    store.create_tables(app.all_tables)
    version = AppVersion(app.name, app.version, app.module, "deployed", time.time(), note)
    return store.deploy(version, starts)


def first_at(
    the_log: Log, stream: Stream, starts: Mapping[int, int], time_ms: int
) -> dict[int, int]:
    """Per partition, the offset of its first record (from ``starts``) whose event time
    is ``time_ms`` or later, or its end if none is; records whose time does not decode
    are passed over. Reads each partition up to that record."""
    kind = next(f.type for f in msgspec.structs.fields(stream.schema) if f.name == stream.time)
    decode = msgspec.json.Decoder(msgspec.defstruct("Timed", [(stream.time, kind)])).decode

    def from_then(value: bytes) -> bool:
        try:
            return stream.time_of(decode(untagged(value)[1])) >= time_ms
        except (ValueError, msgspec.DecodeError):
            return False

    found = {}
    for partition, end in the_log.end_offsets(stream.name).items():
        offset = starts.get(partition, 0)
        while offset < end:
            batch = the_log.read(stream.name, partition, offset, SCAN_RECORDS)
            pairs = zip(batch.offsets, batch.values, strict=True)
            hit = next((at for at, value in pairs if from_then(value)), None)
            if hit is not None or batch.next_offset <= offset:
                offset = end if hit is None else hit
                break
            offset = batch.next_offset
        found[partition] = min(offset, end)
    return found


def running(
    settings: Settings,
    store: Store,
    apps: Sequence[App] | None = None,
    built: Sequence[App] = (),
    versions: Sequence[AppVersion] | None = None,
) -> list[App]:
    """The app versions to run and serve: those of the settings (``apps``, loaded if
    not given), and the others the store records (``versions``, read if not given), but
    the retired ones; each of those among ``built`` is taken from there. A recorded
    version that its module no longer builds is left out, with an error logged."""
    apps = list(load_apps(settings) if apps is None else apps)
    versions = store.app_versions() if versions is None else versions
    recorded = {(v.app, v.version): v for v in versions}
    found = [app for app in apps if getattr(recorded.get((app.name, app.version)), "status",
                                            None) != "retired"]  # fmt: skip
    have = {(app.name, app.version) for app in apps}
    reuse = {(app.name, app.version): app for app in built}
    for key, version in recorded.items():
        if key in have or version.status == "retired":
            continue
        try:
            found.append(reuse.get(key) or _built(settings, version.module, *key))
        except KappaflowError as failure:
            log.error("cannot run %s: %s", version.ref, failure)
    return found


def current(
    settings: Settings, apps: Sequence[App], store: Store, the_log: Log, built: Sequence[App]
) -> tuple[list[App], list[App]]:
    """What a process that runs or serves app versions does on start and now and then:
    `record` the settings' ``apps``, find the versions `running` (those among ``built``,
    what it found last, taken from there), create the tables of those it had not
    built, and return them with the `live` ones."""
    versions = record(settings, apps, store, the_log)
    found = running(settings, store, apps, built, versions)
    for app in found:
        if not any(app is known for known in built):
            store.create_tables(app.all_tables)
    return found, live(found, store, versions)


def live(
    apps: Sequence[App], store: Store, versions: Sequence[AppVersion] | None = None
) -> list[App]:
    """Of ``apps`` (the versions running), each app's live version: the one the store
    records live (``versions``, read if not given), else its lowest."""
    versions = store.app_versions() if versions is None else versions
    statuses = {(v.app, v.version): v.status for v in versions}
    versions: dict[str, list[App]] = {}
    for app in sorted(apps, key=lambda app: app.version):
        versions.setdefault(app.name, []).append(app)
    return [next((app for app in each if statuses.get((app.name, app.version)) == "live"),
                 each[0]) for each in versions.values()]  # fmt: skip


def find(settings: Settings, name: str, version: int, module: str | None = None) -> App:
    """App version ``name@version``, built by ``module``; without one, by the module
    of one of the settings' apps (or of an installed app, when they name none)."""
    if module is not None:
        return _built(settings, module, name, version)
    for candidate in dict.fromkeys(app_modules(settings)):
        app = build_app(settings, candidate)
        if (app.name, app.version) == (name, version):
            return app
    raise AppError(f"no app of KAPPAFLOW_APPS is {name}@{version}: name the module that "
                   "builds it (--module)")  # fmt: skip


def _built(settings: Settings, module: str, name: str, version: int) -> App:
    app = build_app(settings, module)
    if (app.name, app.version) != (name, version):
        raise AppError(f"module {module} builds {app.ref}, not {name}@{version}: keep the "
                       "module of each version that runs")  # fmt: skip
    return app


@dataclass(frozen=True)
class Progress:
    """Where an app version stands: its record, the records appended to its streams
    and those it has processed."""

    version: AppVersion
    appended: int
    processed: int

    @property
    def lag(self) -> int:
        return max(0, self.appended - self.processed)


def progress(apps: Sequence[App], the_log: Log, store: Store) -> list[Progress]:
    """The `Progress` of each of ``apps`` the store records."""
    recorded = {(v.app, v.version): v for v in store.app_versions()}
    totals: dict[tuple[str, int], list[int]] = {}
    for app, _, _, end, committed in partition_offsets(apps, the_log, store):
        total = totals.setdefault((app.name, app.version), [0, 0])
        total[0] += end
        total[1] += committed or 0
    return [Progress(recorded[key], *total) for key, total in totals.items() if key in recorded]


def version_of(settings: Settings, store: Store, name: str, version: int) -> App:
    """Running app version ``name@version``; `AppError` if it is not running."""
    apps = running(settings, store)
    for app in apps:
        if (app.name, app.version) == (name, version):
            return app
    raise AppError(f"{name}@{version} is not running; running: "
                   f"{', '.join(app.ref for app in apps) or 'none'}")  # fmt: skip


def promote(
    settings: Settings, store: Store, the_log: Log, name: str, version: int, max_lag: int | None
) -> Progress:
    """Make ``name@version`` its app's live version, unless it is more than
    ``max_lag`` records behind (None: however far); returns where it stood."""
    app = version_of(settings, store, name, version)
    (stands,) = progress([app], the_log, store)
    if stands.version.status == "live":
        raise AppError(f"{app.ref} is live already")
    if max_lag is not None and stands.lag > max_lag:
        raise AppError(f"{app.ref} is {stands.lag:,} records behind, more than {max_lag:,}: "
                       "wait until it has caught up (kappaflow apps list), or promote it "
                       "however far behind (--force)")  # fmt: skip
    store.promote(name, version)
    return stands


def retire(settings: Settings, store: Store, name: str, version: int) -> App:
    """Stop ``name@version``'s workers and drop its result tables and progress (the
    store refuses to retire a live version)."""
    app = version_of(settings, store, name, version)
    shared = {lookup.table.name for lookup in app.lookups}
    results = [table for table in app.all_tables if table.name not in shared]
    tables = [table.name for table in with_histories(results)]
    store.retire(name, version, tables, [app.group(stream) for stream in app.streams])
    return app


class VersionReads:
    """The store as an app version's queries read it: each result table the version
    stores under another name (`App.renames`) read under the app's own, through a
    common table expression over the stored one, in any SQL they write. The rest of
    the store is the store's."""

    def __init__(self, store: Store, renames: Mapping[str, str]) -> None:
        self.store = store
        self.renames = dict(renames)
        self._names = {name: re.compile(rf"\b{name}\b") for name in renames}

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store.query(self._with(sql), params)

    def select(self, table: Table[R], *args: Any, **kwargs: Any) -> list[R]:
        stored = renamed(table, lambda name: self.renames.get(name, name))
        return self.store.select(stored, *args, **kwargs)

    def _with(self, sql: str) -> str:
        """``sql`` reading each renamed table it names from its stored name."""
        names = [name for name, pattern in self._names.items() if pattern.search(sql)]
        if not names:
            return sql
        tables = ", ".join(f"{name} AS NOT MATERIALIZED (SELECT * FROM {self.renames[name]})"
                           for name in names)  # fmt: skip
        if found := LEADING_WITH.match(sql):  # the query's own expressions follow these
            return f"WITH{found['recursive'] or ''} {tables}, {sql[found.end() :]}"
        return f"WITH {tables} {sql}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


LEADING_WITH = re.compile(r"\s*WITH(?P<recursive>\s+RECURSIVE)?\s", re.IGNORECASE)
