"""The app interface: what a user writes. An app declares its input streams (schema,
key field, event-time field), its result tables, and one processor per stream: a
function ``(state, batch) -> rows`` written by hand over the partition's keyed `State`
(`FunctionProcessor`), or one of the library's operators.
An app's module exposes ``create_app(settings) -> App``; it is named in
``KAPPAFLOW_APPS``, by its module path or by its name as an installed app (an entry
point of the group ``kappaflow.apps``). The guide is docs/apps.md."""

from __future__ import annotations

import bisect
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from itertools import groupby
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, Protocol, TypeVar

import msgspec

from kappaflow.errors import AppError, SettingsError, StateFormatError
from kappaflow.events import event_time_ms
from kappaflow.events.versions import Earlier
from kappaflow.query.params import Text
from kappaflow.settings import PREFIX, Settings
from kappaflow.stream.state import State

if TYPE_CHECKING:  # types only: ingest reads apps' streams and loads nothing of the store
    from kappaflow.store.base import Row, Store, Table

S = TypeVar("S")
T = TypeVar("T")
V = TypeVar("V")
INSTALLED = "kappaflow.apps"
"""The entry-point group of installed apps: name -> the app's module."""


@dataclass(frozen=True)
class Stream:
    """An input stream: events of ``schema``, partitioned by ``key``, timed by ``time``
    (an RFC 3339 datetime, or a number of ``time_unit``: epoch milliseconds or seconds).
    With ``dedup_by``, the name of an optional string field (``str | None``), an event
    whose key and id an earlier counted event had, within ``dedup_window_s`` of the
    partition's event time, goes to the dead letters as a ``duplicate``: a client's
    retry counts once.

    ``schema`` is the stream's current version; ``earlier`` lists the versions before
    it, oldest first (version 1 first), each with its upcaster to the next
    (`kappaflow.events.versions`): ingest accepts every version, and a processor gets
    each event as the current version. Every version has the ``key`` and ``time``
    fields."""

    name: str
    schema: type[msgspec.Struct]
    key: str
    time: str
    time_unit: Literal["ms", "s"] = "ms"
    dedup_by: str | None = None
    earlier: Sequence[Earlier] = ()

    @property
    def version(self) -> int:
        """The current version's number."""
        return len(self.earlier) + 1

    def schema_of(self, version: int) -> type[msgspec.Struct]:
        """The schema of ``version`` (from 1)."""
        return self.schema if version == self.version else self.earlier[version - 1].schema

    def upcast(self, version: int, events: list[Any]) -> list[Any]:
        """``events`` of ``version``, read with the schema of `read_as` ``version``, as
        events of the current version."""
        version = self.read_as(version)
        while version < self.version:
            events = list(map(self.earlier[version - 1].upcast, events))  # type: ignore[arg-type]
            ahead = self.read_as(version + 1)
            if ahead > version + 1:  # versions without upcasters: the same fields, and more
                schema = self.schema_of(ahead)
                events = [msgspec.convert(e, schema, from_attributes=True) for e in events]
            version = ahead
        return events

    def read_as(self, version: int) -> int:
        """The version whose schema reads records of ``version``: the first from it on
        that has an upcaster, or the current one (a version without an upcaster reads
        as the next)."""
        while version < self.version and self.earlier[version - 1].upcast is None:
            version += 1
        return version

    def __post_init__(self) -> None:
        current = {f.name: f.type for f in msgspec.inspect.type_info(self.schema).fields}
        for version in range(1, self.version):
            schema = self.schema_of(version)
            fields = {f.name: f.type for f in msgspec.inspect.type_info(schema).fields}
            if changed := [f for f in (self.key, self.time) if fields.get(f) != current.get(f)]:
                raise AppError(
                    f"stream {self.name!r}: field {changed[0]} of version {version} "
                    f"({schema.__name__}) is not as in the current version: every version "
                    "has the key and time fields, of one type (the log is partitioned and "
                    "timed by them before any upcaster runs)"
                )
        if self.dedup_by is None:
            return
        fields = {f.name: f.type for f in msgspec.inspect.type_info(self.schema).fields}
        kind = fields.get(self.dedup_by)
        if kind is None or not _string_or_none(kind):
            raise AppError(
                f"stream {self.name!r}: dedup_by={self.dedup_by!r} must name a field of "
                f"{self.schema.__name__} typed str or str | None; its fields: "
                f"{', '.join(fields)}"
            )

    def time_of(self, event: Any) -> int:
        return self._time_ms(getattr(event, self.time))

    def times_ms(self, events: Sequence[Any]) -> list[int]:
        """The event time of each of ``events`` in epoch milliseconds."""
        return self._times(list(map(attrgetter(self.time), events)))[0]

    def read(self, events: list[Any]) -> tuple[list[Any], list[int]]:
        """``events`` as processors get them, their time field an int of the stream's
        unit (records keep RFC 3339 times, and numbers written with a fraction, as
        sent), and their event times in epoch milliseconds."""
        values = list(map(attrgetter(self.time), events))
        times, whole = self._times(values)
        if whole:
            return events, times
        replace, name = msgspec.structs.replace, self.time
        scale = 1000 if self.time_unit == "s" else 1
        events = [
            event if type(value) is int else replace(event, **{name: time_ms // scale})
            for event, value, time_ms in zip(events, values, times, strict=True)
        ]
        return events, times

    def _times(self, values: list[Any]) -> tuple[list[int], bool]:
        """The epoch milliseconds of time-field ``values``, and whether every one was an
        int already."""
        if set(map(type, values)) <= {int}:
            return (values if self.time_unit == "ms" else [v * 1000 for v in values]), True
        return list(map(self._time_ms, values)), False

    def _time_ms(self, value: Any) -> int:
        if self.time_unit == "s" and not isinstance(value, datetime):
            return round(value * 1000)
        return event_time_ms(value)


def _string_or_none(kind: msgspec.inspect.Type) -> bool:
    if isinstance(kind, msgspec.inspect.Metadata):
        return _string_or_none(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return all(map(_string_or_none, kind.types))
    return isinstance(kind, msgspec.inspect.StrType | msgspec.inspect.NoneType)


class Batch(NamedTuple):
    """Events of one partition, in offset order, with their event times in epoch
    milliseconds; the events below ``watermark_ms`` are left out unless the processor
    judges lateness itself (see `Processor`). ``watermark_ms``: the partition's highest
    event time, counted no further than the wall clock, less the allowed lateness;
    every later event the processor gets is at or above it. ``clock_ms``: a clock (ms)
    that runs while the worker keeps up with the partition, to time what closes after
    a while without events: a worker that falls behind closes nothing early."""

    partition: int
    offsets: list[int]
    events: list[Any]
    times_ms: list[int]
    watermark_ms: int
    clock_ms: int = 0


Rows = dict[str, list["Row"]]
"""Result rows by table name: a typed table's structs (or tuples in its column order),
another table's tuples."""


class Output(NamedTuple, Generic[S]):
    state: S
    rows: Rows
    dead_letters: Sequence[tuple[int, str]] = ()
    """(offset, reason) of events the processor refused."""


class Processor(Protocol[S]):
    """Turns one partition's batches into result rows: the general shape, which
    `FunctionProcessor` and the library's operators take. ``process`` may update the
    state it receives in place and return it. The worker persists the state with each
    commit: ``encode`` gives its partition-wide part, ``changed_keys`` the keys changed
    since the last call (so a commit writes only those), and ``decode`` restores both.

    A processor with a method ``key_count(state) -> int`` has the keys its state holds
    shown on ``/metrics`` (``kappaflow_state_keys``), as the library's operators do.

    A processor whose class sets ``judges_lateness = True`` (a keyed operator, such as
    `SessionWindows`) gets every event and dead-letters the late ones itself, each
    against its own key's events; the others get only the events at or above the
    partition's watermark. One with ``closes_idle = True`` (by default, one that judges
    lateness) is also given an empty batch now and then while its partition has no
    records, to close what has been idle by ``batch.clock_ms``."""

    def initial_state(self) -> S: ...

    def process(self, state: S, batch: Batch) -> Output[S]: ...

    def encode(self, state: S) -> bytes: ...

    def changed_keys(self, state: S) -> dict[str, bytes | None]:
        """Each key changed since the last call, encoded, or None if it was removed."""
        ...

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> S: ...


class FunctionProcessor(Generic[V]):
    """A `Processor` from a function written by hand, ``process(state, batch)``, where
    ``state`` is the partition's keyed `State` of values of ``value_type`` (anything
    msgspec encodes). It returns the rows by table name, or, to refuse events, an
    ``Output(state, rows, dead_letters)``. A commit writes the keys whose value the
    batch changed. With ``ttl_s``, a key not set for that many seconds of the
    partition's event time (its watermark) is deleted, so that state stays bounded:
    never sooner, and at most two batches' spans of event time later (see
    `State.advance`)."""

    def __init__(
        self,
        process: Callable[[State[V], Batch], Rows | Output[State[V]]],
        value_type: Any,
        *,
        ttl_s: float | None = None,
    ) -> None:
        if ttl_s is not None and not ttl_s > 0:
            raise AppError(f"{_name(process)}: ttl_s must be a positive number of seconds, "
                           f"got {ttl_s!r}")  # fmt: skip
        self._process = process
        self.value_type = value_type
        self.ttl_ms = None if ttl_s is None else round(ttl_s * 1000)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(int | dict[str, msgspec.Raw]).decode

    def initial_state(self) -> State[V]:
        return State(self.value_type, self.ttl_ms)

    def process(self, state: State[V], batch: Batch) -> Output[State[V]]:
        state.advance(batch.watermark_ms)
        result = self._process(state, batch)
        state.flush()
        if isinstance(result, dict):
            return Output(state, result)
        if isinstance(result, Output):
            return Output(state, result.rows, result.dead_letters)
        raise TypeError(f"{_name(self._process)} returned {type(result).__name__}: return "
                        "the rows by table name, or Output(state, rows, dead_letters)")  # fmt: skip

    def encode(self, state: State[V]) -> bytes:
        return b"" if state.now_ms is None else self._encode(state.now_ms)  # the rest is keyed

    def changed_keys(self, state: State[V]) -> dict[str, bytes | None]:
        return state.changes()

    def key_count(self, state: State[V]) -> int:
        return len(state)

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> State[V]:
        """The state from its keys and the partition's event time (``data``); or, from
        an earlier version, ``data`` is the whole state (a map of keys to values), whose
        keys are all written with the next commit."""
        try:
            kept = self._decode(data) if data else None
        except msgspec.DecodeError as error:
            raise AppError(f"{_name(self._process)}: the partition's stored state is not "
                           f"keyed ({error}): another processor kept it; move the store "
                           "aside and start again, the workers compute the results again "
                           "from the log") from None  # fmt: skip
        if not isinstance(kept, dict):
            return State(self.value_type, self.ttl_ms, keys, now_ms=kept)
        snapshot = {key: bytes(value) for key, value in kept.items()}
        changed = [key for key in snapshot if key not in keys]
        return State(self.value_type, self.ttl_ms, {**snapshot, **keys}, changed)


def closes_idle(processor: Processor[Any]) -> bool:
    """Whether ``processor`` is to be given the idle time's empty batches: its
    ``closes_idle``, by default whether it judges lateness (see `Processor`)."""
    judges = getattr(processor, "judges_lateness", False)
    return getattr(processor, "closes_idle", judges)


class Delegating:
    """A `Processor` made of another, ``inner``, whose state is the inner one's: a
    base for an operator that chooses or wraps the processor doing its work."""

    inner: Processor[Any]

    def initial_state(self) -> Any:
        return self.inner.initial_state()

    def process(self, state: Any, batch: Batch) -> Output[Any]:
        return self.inner.process(state, batch)

    def encode(self, state: Any) -> bytes:
        return self.inner.encode(state)

    def changed_keys(self, state: Any) -> dict[str, bytes | None]:
        return self.inner.changed_keys(state)

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> Any:
        return self.inner.decode(data, keys)

    def key_count(self, state: Any) -> int:
        count = getattr(self.inner, "key_count", None)
        return 0 if count is None else count(state)


class Stateless:
    """The state of a `Processor` that keeps none: a base for one."""

    def initial_state(self) -> None:
        return None

    def encode(self, state: None) -> bytes:
        return b""

    def changed_keys(self, state: None) -> dict[str, bytes | None]:
        return {}

    def key_count(self, state: None) -> int:
        return 0

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> None:
        if data or keys:
            raise StateFormatError(f"{type(self).__name__} keeps no state, but the store "
                                   "holds some for the partition")  # fmt: skip


def _name(function: Callable[..., Any]) -> str:
    """A function's name, or its repr (a `functools.partial`, say)."""
    return getattr(function, "__qualname__", None) or repr(function)


@dataclass(frozen=True)
class Param:
    """A query-string parameter of a `Query`. Its value must convert to ``type`` by
    msgspec's rules for strings: such as ``Annotated[int, Meta(ge=1, le=1000)]``, a
    ``Literal`` of words, a ``datetime.date``, or the types of `kappaflow.query.params`
    (`Text`, the default: any text without control characters). The service converts it
    before the query runs, answering 400 naming it when it does not convert, and the
    OpenAPI document states it."""

    description: str
    required: bool = False
    type: Any = Text


@dataclass(frozen=True)
class Query:
    """A read query served over HTTP: ``GET path``, where ``path`` is a template like
    ``/v1/progress/{user_id}/{video_id}``. ``run(store, params)`` receives the path
    parameters (text) and the query-string parameters, those of ``params`` converted to
    their type, and returns a msgspec-encodable ``result``, or None when nothing is
    found (404); it raises `InvalidQuery` for bad parameters (400), such as a range
    whose ends are the wrong way round. A query whose ``result`` is a ``list[...]`` is
    also served as CSV (``format=csv`` or ``Accept: text/csv``), and finds a list,
    empty or not: never None."""

    path: str
    run: Callable[[Store, Mapping[str, Any]], Any]
    summary: str
    result: Any = None
    """The type of the result, for the OpenAPI document."""
    params: Mapping[str, Param] = field(default_factory=dict)
    """The query-string parameters ``run`` reads, by name."""


class Lookup(Generic[T]):
    """Reference data a processor reads, such as a catalog: a table written with
    `Store.upsert`, loaded by each worker and reloaded whenever its version changes.
    ``index(rows)`` turns the rows (as `Store.select` reads them) into what the
    processor looks things up in: ``data``, the rows as last uploaded.

    Of a table with history, ``at(time_ms)`` is the data in force at an event's time:
    each key's row of the latest upload valid from that time or before (the first
    upload's for a time before any), so that results computed again from the log are
    those computed live. It keeps an index per upload."""

    def __init__(self, table: Table, index: Callable[[list[Any]], T]) -> None:
        self.table = table
        self._index = index
        self._version = -1
        self.data: T = index([])
        self._starts: list[int] = []
        """The times the indexes of ``_in_force`` are valid from, in order."""
        self._in_force: list[T] = []

    def refresh(self, store: Store) -> None:
        version = store.version(self.table.name)
        if version == self._version:
            return
        self.data = self._index(store.select(self.table))
        if self.table.history:
            self._starts, self._in_force = self._uploads(store)
        self._version = version

    def at(self, time_ms: int) -> T:
        """The data in force at ``time_ms`` (without history: ``data``)."""
        if len(self._starts) < 2:
            return self.data
        return self._in_force[max(0, bisect.bisect_right(self._starts, time_ms) - 1)]

    def _uploads(self, store: Store) -> tuple[list[int], list[T]]:
        """Each upload's time and the index of the rows in force from it on."""
        from kappaflow.store.tables import VALID_FROM, rows_read

        history = self.table.history_table
        found = store.query(f"SELECT {', '.join(history.column_names)} FROM {history.name} "
                            f"ORDER BY {VALID_FROM}")  # fmt: skip
        if not found:  # uploaded before the table had history: valid ever since
            return [0], [self.data]
        key = itemgetter(*(history.column_names.index(name) for name in self.table.key))
        starts: list[int] = []
        in_force: list[T] = []
        rows: dict[Any, tuple[Any, ...]] = {}
        for valid_from, upload in groupby(found, itemgetter(0)):
            rows.update((key(row), row[1:]) for row in upload)
            starts.append(valid_from)
            in_force.append(self._index(rows_read(self.table, list(rows.values()))))
        return starts, in_force


@dataclass(frozen=True)
class Upload:
    """A write of reference data served over HTTP: ``POST path`` of JSON or CSV;
    ``run(store, body, content_type)`` validates the body, writes it with `Store.upsert`
    and returns a summary; it raises `InvalidEvents` (400, nothing written) for bad rows.
    A ``run`` of a fourth parameter, ``valid_from_ms``, takes the request's
    ``valid_from`` (None: not given) for the upsert of a table with history; to another,
    a request giving it is a 400. The body is at most ``ingest_max_body_bytes``; a
    `RecursionError` (msgspec's, for JSON nested too deeply) is a 400 too."""

    path: str
    run: Callable[..., Any]
    summary: str
    body: Any = None
    """The type of a JSON body, for the OpenAPI document."""
    result: Any = None
    """The type of the summary, for the OpenAPI document."""
    csv: str = "CSV with a header line naming the columns"
    """What a CSV body holds, for the OpenAPI document."""

    @property
    def takes_valid_from(self) -> bool:
        return len(inspect.signature(self.run).parameters) > 3

    def write(self, store: Store, body: bytes, content_type: str, valid_from_ms: int | None) -> Any:
        """``run`` the upload (with ``valid_from_ms`` if it takes it)."""
        if self.takes_valid_from:
            return self.run(store, body, content_type, valid_from_ms)
        return self.run(store, body, content_type)


@dataclass
class App:
    name: str
    streams: Sequence[Stream]
    tables: Sequence[Table]
    processors: dict[str, Processor[Any] | Sequence[Processor[Any]]] = field(default_factory=dict)
    """Stream name -> its processor, or a list of them (each gets every batch: see
    `kappaflow.ops.Fanout`)."""
    queries: Sequence[Query] = ()
    lookups: Sequence[Lookup[Any]] = ()
    uploads: Sequence[Upload] = ()
    settings: msgspec.Struct | None = None
    """The app's own settings, as `Settings.app` read them under the app's name."""
    version: int = 1
    """Versions of one app run side by side (`kappaflow.deployments`): each reads the
    streams in consumer groups of its own and writes result tables of its own, named
    ``<table>_v<version>`` from version 2 on (`stored_name`); reference tables are
    shared."""
    module: str = field(default="", init=False)
    """The module that built it (see `build_app`)."""

    def __post_init__(self) -> None:
        """Make a list of processors one, and check each against its stream (an
        operator's ``bind(stream)``, which raises `AppError`), and the tables (see
        `all_tables`). The lookups the processors join with (their ``lookups``) are the
        app's too, so that its workers load them."""
        from kappaflow.ops.fanout import Fanout  # the library builds on this module

        if not (isinstance(self.version, int) and self.version >= 1):
            raise AppError(f"app {self.name!r}: version must be a whole number from 1, got "
                           f"{self.version!r}")  # fmt: skip
        lookups = list(self.lookups)
        for name, processor in self.processors.items():
            if isinstance(processor, Sequence):
                processor = self.processors[name] = Fanout(processor)
            bind = getattr(processor, "bind", None)
            if bind is not None:
                bind(self.stream(name))
            lookups += [each for each in getattr(processor, "lookups", ()) if each not in lookups]
        self.lookups = lookups
        self._tables_by_name()

    @property
    def ref(self) -> str:
        """``name@version``: the app version, as the CLI names it."""
        return f"{self.name}@{self.version}"

    @property
    def all_tables(self) -> list[Table]:
        """Result tables (those listed, and the library's operators' own tables) under
        their `stored_name`, and the lookups' reference tables."""
        from kappaflow.store.tables import renamed

        renames = self.renames
        return [renamed(table, lambda name: renames.get(name, name))
                for table in self._tables_by_name().values()]  # fmt: skip

    @property
    def renames(self) -> dict[str, str]:
        """Each result table's name -> its `stored_name`, where they differ."""
        shared = {lookup.table.name for lookup in self.lookups}
        names = [name for name in self._tables_by_name() if name not in shared]
        return {name: stored for name in names if (stored := self.stored_name(name)) != name}

    def stored_name(self, table: str) -> str:
        """The name result table ``table`` has in the store: its own in version 1,
        ``<table>_v<version>`` from version 2 on."""
        return table if self.version == 1 else f"{table}_v{self.version}"

    def _tables_by_name(self) -> dict[str, Table]:
        """`AppError` for two operators writing one table (such as two aggregates of one
        struct, whose rows would mix), or two different tables of one name."""
        operators = [t for p in self.processors.values() for t in getattr(p, "tables", ())]
        names = [table.name for table in operators]
        tables: dict[str, Table] = {}
        for table in [*self.tables, *operators, *(lookup.table for lookup in self.lookups)]:
            if names.count(table.name) > 1 or tables.setdefault(table.name, table) != table:
                raise AppError(
                    f"app {self.name!r}: two operators, or two different tables, write table "
                    f"{table.name}, whose rows would mix; name one otherwise (table=)"
                )
        return tables

    def group(self, stream: Stream) -> str:
        """The consumer group: the identity under which offsets and state are kept."""
        name = self.name if self.version == 1 else self.ref
        return f"{name}.{stream.name}"

    def stream(self, name: str) -> Stream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise AppError(f"app {self.name!r} has no stream {name!r}")


def load_apps(settings: Settings) -> list[App]:
    """The apps named in ``settings.apps`` (every installed app if none); `SettingsError`
    for a setting that is neither the core's nor one of theirs."""
    apps = [build_app(settings, module) for module in app_modules(settings)]
    _check_app_settings(settings, apps)
    return apps


def app_modules(settings: Settings) -> list[str]:
    """The modules of the apps ``settings.apps`` names (an installed app's name stands
    for its module), or of every installed app if it names none."""
    installed = {entry.name: entry.value for entry in entry_points(group=INSTALLED)}
    return [installed.get(name, name) for name in settings.apps or installed]


def build_app(settings: Settings, module_name: str) -> App:
    """The app that module ``module_name``'s ``create_app`` builds, its `App.module` set."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AppError(f"KAPPAFLOW_APPS: cannot import app {module_name!r}: {error}") from error
    create: Callable[[Settings], App] | None = getattr(module, "create_app", None)
    if create is None:
        raise AppError(f"app module {module_name!r} has no create_app(settings) function")
    app = create(settings)
    app.module = module_name
    return app


def _check_app_settings(settings: Settings, apps: Sequence[App]) -> None:
    known = {f"{app.name}_{field}" for app in apps if app.settings is not None
             for field in app.settings.__struct_fields__}  # fmt: skip
    for name, source, _ in settings.app_settings:
        if name not in known:
            names = [*Settings.names(), *sorted(known)]
            raise SettingsError(
                f"unknown setting {source}; known settings: "
                + ", ".join(PREFIX + name.upper() for name in names)
            )
