"""The one settings object, read once at start-up from defaults, an optional TOML
file (``KAPPAFLOW_CONFIG``) and ``KAPPAFLOW_*`` environment variables, in that order
of precedence. Nothing else in kappaflow reads the environment. An app's own settings
are ``<app>_<name>`` (``KAPPAFLOW_VIDEO_SESSION_GAP_S``, or ``session_gap_s`` in a TOML
table ``[video]``): kept as given until the app reads them with `Settings.app`, which
checks them as the core's are; `kappaflow.app.load_apps` refuses any left unread."""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from kappaflow import __version__
from kappaflow.errors import SettingsError

PREFIX = "KAPPAFLOW_"
CONFIG_VARIABLE = "KAPPAFLOW_CONFIG"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Where processes started together share their metrics (prometheus_client)."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")
AppSettings = TypeVar("AppSettings", bound=msgspec.Struct)
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]


class Rule(msgspec.Struct, frozen=True):
    """An HPA scaling policy: change by ``value`` pods or percent per ``period_s``."""

    kind: Literal["pods", "percent"]
    value: int
    period_s: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}:{self.period_s}"


Rules = tuple[Rule, ...]
Select = Literal["max", "min", "disabled"]


def parse_rules(text: str) -> Rules:
    """``pods:4:15,percent:100:15`` -> rules (the settings' spelling); ValueError if not."""
    rules = []
    for part in text.split(","):
        kind, value, period = part.strip().split(":")
        if kind not in ("pods", "percent") or int(value) < 1 or int(period) < 1:
            raise ValueError(part)
        rules.append(Rule(kind, int(value), int(period)))  # type: ignore[arg-type]
    return tuple(rules)


class Scaling(msgspec.Struct, frozen=True, kw_only=True):
    """The autoscaling policy's settings: KEDA ScaledObject and HPA field names, snake_case,
    durations in seconds. The defaults are kappaflow's; KEDA's differ in
    ``lag_threshold`` (10) and ``min_replicas`` (0)."""

    lag_threshold: PositiveInt = 20_000
    """Target lag per worker (KEDA ``lagThreshold``)."""
    activation_lag_threshold: NonNegativeInt = 0
    offset_reset_policy: Literal["latest", "earliest"] = "latest"
    allow_idle_consumers: bool = False
    exclude_persistent_lag: bool = False
    scale_to_zero_on_invalid_offset: bool = False
    limit_to_partitions_with_lag: bool = False
    ensure_even_distribution_of_partitions: bool = False
    partition_limitation: str = ""
    """Partitions whose lag counts, such as ``1,2,10-20``; empty: every one."""
    topics: tuple[str, ...] = ()
    """Streams whose lag counts (a KEDA trigger each, on its ``topic``); none: every app
    stream."""
    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt = 100
    idle_replica_count: NonNegativeInt | None = None
    """What an inactive pool goes to after the cooldown, instead of ``min_replicas``
    (KEDA ``idleReplicaCount``; less than ``min_replicas``)."""
    paused_replicas: NonNegativeInt | None = None
    """Hold the workers at this many, deciding nothing (KEDA's paused-replicas
    annotation); ``kappaflow scale pause`` does the same for a running stack."""
    cooldown_period_s: NonNegativeFloat = 300.0
    initial_cooldown_period_s: NonNegativeFloat = 0.0
    """Least time from the autoscaler's start to a scale-in when never active."""
    fallback_replicas: NonNegativeInt = 0
    """Replicas to stand for while the lag cannot be read (KEDA ``fallback``); 0: none,
    the replicas stay."""
    fallback_failure_threshold: NonNegativeInt = 3
    """Polls in a row that cannot read the lag beyond which the fallback acts."""
    fallback_behavior: Literal[
        "static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"
    ] = "static"
    tolerance: NonNegativeFloat = 0.1
    behavior: bool = False
    """Render and apply an HPA ``behavior`` block (false: KEDA's default, none)."""
    scale_up_stabilization_s: NonNegativeFloat = 0.0
    scale_up_policies: Rules = (Rule("pods", 4, 15), Rule("percent", 100, 15))
    scale_up_select: Select = "max"
    scale_down_stabilization_s: NonNegativeFloat = 300.0
    scale_down_policies: Rules = (Rule("percent", 100, 15),)
    scale_down_select: Select = "max"
    scale_up_limit_factor: Annotated[float, Meta(ge=1)] = 2.0
    """Without ``behavior``, the HPA goes up to max(factor x replicas, minimum) at once."""
    scale_up_limit_minimum: PositiveInt = 4


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of a kappaflow deployment. Field ``x`` is variable ``KAPPAFLOW_X``."""

    data_dir: str = "kappaflow-data"
    """Directory of the embedded log and the SQLite store."""
    apps: tuple[str, ...] = ()
    """Apps to run: names of installed apps (the ``kappaflow.apps`` entry points, such as
    the built-in ``video`` and ``clicks``) or importable modules, comma-separated in the
    environment; none: every installed app."""
    partitions: PositiveInt = 8
    """Partitions of each stream's topic."""
    log: Literal["embedded", "kafka"] = "embedded"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_client_config: tuple[str, ...] = ()
    """Extra librdkafka settings as ``key=value`` items (security.protocol, sasl.*, ssl.*)."""
    store: Literal["sqlite", "postgres"] = "sqlite"
    postgres_dsn: str = "postgresql://127.0.0.1:5432/kappaflow"
    """libpq connection string of the PostgreSQL or YugabyteDB (YSQL) store."""
    log_fsync: Literal["batch", "never"] = "batch"
    """``batch``: every append is on disk before it returns. ``never``: leave flushing to
    the operating system (faster; a power loss can drop acknowledged events)."""
    log_segment_bytes: Annotated[int, Meta(ge=4096)] = 64 * 1024 * 1024
    log_retention_bytes: NonNegativeInt = 0
    """Per partition; 0 keeps everything. Only data every consumer has committed is deleted."""
    log_retention_hours: NonNegativeFloat = 168.0
    """Segments older than this may be deleted once consumed; 0 disables age retention."""
    log_retention_check_s: PositiveFloat = 60.0
    """How often ``kappaflow up`` applies the embedded log's retention."""
    batch_max_events: PositiveInt = 20_000
    """Most records a worker reads from one partition per batch."""
    poll_interval_ms: PositiveInt = 50
    """How long an idle worker waits before polling the log again."""
    commit_interval_ms: NonNegativeInt = 250
    """Least time from one of a worker's commits to the next while it keeps up (one that
    read a full batch is behind, and commits again at once). A commit then carries
    more events, and each store page it rewrites serves more of them; the cost is up to
    this much more time from ingest to queryable."""
    allowed_lateness_s: NonNegativeFloat = 30.0
    """How far an event may be behind the latest before it: for keyed operators (the
    video app's sessions), the latest of its own key; for windows over all keys, the
    latest of its partition, never counted past the wall clock. Later events are
    dead-lettered (docs/event-time.md)."""
    max_future_skew_s: NonNegativeFloat = 300.0
    """Ingest refuses (400) event times more than this ahead of its own clock."""
    idle_timeout_s: PositiveFloat = 30.0
    """Wall-clock time without new events after which a key's open session closes (and a
    partition's windows, when the partition gets no records)."""
    dedup_window_s: PositiveFloat = 3600.0
    """How long a stream that de-duplicates (`Stream.dedup_by`: the heartbeats' and the
    clicks' ``event_id``) remembers the id of an event it counted: a retry with the same
    key and id is dead-lettered as ``duplicate`` while its partition's event time is
    within this of when the first counted; a later one counts again
    (docs/dead-letters.md)."""
    dedup_max_ids: PositiveInt = 100_000
    """Most event ids remembered per partition (about 150 bytes of a worker's memory
    each): beyond them, the oldest are forgotten first, before their window ends."""
    host: str = "127.0.0.1"
    """Address the HTTP services listen on (0.0.0.0 in containers)."""
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000
    auth: Literal["auto", "on", "off"] = "auto"
    """Whether the HTTP services ask for an API key (``kappaflow keys``; docs/security.md):
    ``auto`` does unless they listen on a loopback address only (127.0.0.1)."""
    admin_key: str = ""
    """A key's secret that every scope accepts besides the store's keys (``kappaflow keys
    new-secret`` prints one; the deploy files read it from a Secret)."""
    api_key: str = ""
    """The key's secret that kappaflow's own HTTP clients (``kappaflow replay``) send."""
    tls_cert_file: str = ""
    """PEM certificate (then its chain) the HTTP services present: with ``tls_key_file``
    they serve HTTPS only (docs/security.md)."""
    tls_key_file: str = ""
    """PEM private key of ``tls_cert_file``."""
    tls_ca_file: str = ""
    """PEM certificates that kappaflow's own HTTP clients trust besides the system's: a
    self-signed ``tls_cert_file``, or a private CA's."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names the HTTP services answer (``*.example.com``: its subdomains); a request
    for another is answered 400. The probes (``/healthz``, ``/readyz``) answer any.
    None given: any host, or when they listen on loopback only, ``localhost``,
    ``127.0.0.1`` and ``::1``, so that no web page can reach them by a name of its own
    (DNS rebinding)."""
    cors_origins: tuple[str, ...] = ()
    """Origins (``https://app.example.com``, exactly) whose web pages may call the HTTP
    services from a browser; none: no page of another origin may."""
    ingest_rate_limit: str = ""
    """Most ingest requests per API key (per client address with authentication off),
    in each ingest process, as ``100/second`` or ``100/second;3000/minute``; more are
    answered 429 with ``Retry-After``. Empty: no limit."""
    worker_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    """Port on which ``kappaflow worker`` serves ``/healthz`` and ``/metrics`` (on
    ``host``); 0: none. Containers serve on 8000; ``kappaflow up``'s workers serve none
    (its server's ``/metrics`` adds up theirs)."""
    workers: PositiveInt = 2
    """Worker processes ``kappaflow up`` starts."""
    image: str = f"kappaflow:{__version__}"
    """The image (name and tag) every role runs in the files ``kappaflow deploy render``
    writes; ``make image`` builds ``kappaflow:<version>``. Push it to your registry and
    name it there (``registry.example/kappaflow:0.1.0``) before rendering."""
    ingest_max_body_bytes: PositiveInt = 4 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    ingest_max_backlog: PositiveInt = 5_000_000
    """Events appended but not yet processed above which ingest answers 429."""
    retry_after_s: PositiveInt = 1
    """``Retry-After`` of 429 and 503 answers."""
    http_header_timeout_s: PositiveFloat = 10.0
    """Longest a request's head (request line and headers) may take to arrive, from the
    connection's opening or its previous answer; then the connection is closed, with a
    408 if the request had begun."""
    http_body_timeout_s: PositiveFloat = 60.0
    """Longest a request's body may take to arrive after its head; then 408 and the
    connection is closed."""
    http_keep_alive_s: PositiveFloat = 5.0
    """Idle time after an answer at which a keep-alive connection is closed."""
    http_max_connections: PositiveInt = 512
    """Open connections beyond which requests are answered 503 and their connection
    closed; keep it under the process's open-file limit (``ulimit -n``)."""

    # Autoscaling (docs/autoscaling.md).
    autoscale: bool = True
    """``kappaflow up`` scales workers on lag; false: it runs ``workers`` workers."""
    polling_interval_s: PositiveFloat = 5.0
    scaling: Scaling = Scaling()
    """The policy's settings, each a setting of its own name (``lag_threshold``)."""
    app_settings: tuple[tuple[str, str, Any], ...] = ()
    """The apps' settings as given: (name, where it was given, value), for `app`."""

    @property
    def auth_on(self) -> bool:
        """Whether the HTTP services ask for an API key (see ``auth``)."""
        if self.auth != "auto":
            return self.auth == "on"
        return self.host not in LOOPBACK

    @property
    def answered_hosts(self) -> tuple[str, ...]:
        """The Host names the HTTP services answer (see ``allowed_hosts``); none: any."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return LOOPBACK if self.host in LOOPBACK else ()

    @property
    def url(self) -> str:
        """Where the HTTP services of these settings answer."""
        scheme = "https" if self.tls_cert_file else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def log_path(self) -> Path:
        """Directory of the embedded log."""
        return self.data_path / "log"

    @property
    def sqlite_path(self) -> Path:
        return self.data_path / "kappaflow.db"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, a group's (``scaling``) in its place; ``x`` is
        ``KAPPAFLOW_X``."""
        return tuple(_HINTS)

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Defaults < TOML file named by ``KAPPAFLOW_CONFIG`` < environment < overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, tuple[str, Any]] = {}
        if config := environ.get(CONFIG_VARIABLE):
            for key, value in _flat(_read_toml(Path(config))).items():
                values[key] = (f"{key} in {config}", value)
        for name, value in environ.items():
            if name.startswith(PREFIX) and name != CONFIG_VARIABLE:
                values[name[len(PREFIX) :].lower()] = (name, value)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = (f"--{key.replace('_', '-')}", value)
        core = {key: _convert(_HINTS[key], source, value)
                for key, (source, value) in values.items() if key in _HINTS}  # fmt: skip
        apps = tuple((key, source, value) for key, (source, value) in values.items()
                     if key not in _HINTS)  # fmt: skip
        return cls().replace(**core, app_settings=apps)

    def app(self, name: str, kind: type[AppSettings]) -> AppSettings:
        """App ``name``'s settings: each field ``x`` of ``kind`` from setting ``<name>_x``
        if given, else its default; a bad value, or a setting ``<name>_*`` that ``kind``
        lacks, raises `SettingsError` naming it."""
        prefix, hints = f"{name}_", typing.get_type_hints(kind, include_extras=True)
        values = {}
        for key, source, value in self.app_settings:
            if not key.startswith(prefix):
                continue
            field = key.removeprefix(prefix)
            if field not in hints:
                known = ", ".join(PREFIX + (prefix + f).upper() for f in hints)
                raise SettingsError(f"unknown setting {source}; app {name!r} has {known}")
            values[field] = _convert(hints[field], source, value)
        return kind(**values)

    def to_environ(self) -> dict[str, str]:
        """These settings as ``KAPPAFLOW_*`` variables, for child processes."""
        environ = {}
        values = [(name, getattr(getattr(self, _GROUP_OF[name]) if name in _GROUP_OF else self,
                                 name)) for name in _HINTS]  # fmt: skip
        values += [(name, value) for name, _, value in self.app_settings]
        for name, value in values:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            text = "" if value is None else text
            environ[PREFIX + name.upper()] = text
        return environ

    def replace(self, **changes: Any) -> Settings:
        """These settings with some changed, by setting name (a group's fields by theirs,
        an app's as ``<app>_<name>``)."""
        apps = {name: changes.pop(name) for name in list(changes) if name not in _FIELDS}
        if apps:
            kept = [entry for entry in self.app_settings if entry[0] not in apps]
            given = [(name, f"{name}=", value) for name, value in apps.items()]
            changes["app_settings"] = (*kept, *given)
        groups: dict[str, dict[str, Any]] = {}
        for name in [name for name in changes if name in _GROUP_OF]:
            groups.setdefault(_GROUP_OF[name], {})[name] = changes.pop(name)
        for group, fields in groups.items():
            changes[group] = msgspec.structs.replace(getattr(self, group), **fields)
        return msgspec.structs.replace(self, **changes)


def _is_group(hint: Any) -> bool:
    """A field of `Settings` whose struct holds settings, each under its own name."""
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def _hints(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """Each setting's type, a group's settings in the group's place."""
    hints = {}
    for name, hint in typing.get_type_hints(struct, include_extras=True).items():
        hints.update(_hints(hint) if _is_group(hint) else {name: hint})
    return hints


_HINTS = _hints(Settings)
_HINTS.pop("app_settings")
_FIELDS = {*_HINTS, *Settings.__struct_fields__}
_GROUP_OF = {
    name: group
    for group, hint in typing.get_type_hints(Settings).items()
    if _is_group(hint)
    for name in hint.__struct_fields__
}
"""Setting -> the field of `Settings` that holds it, for a group's settings."""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"{CONFIG_VARIABLE}: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{CONFIG_VARIABLE}: {path} is not valid TOML: {error}") from None


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML document's settings, a table's ``[video] x`` as ``video_x``."""
    flat = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}_"))
        else:
            flat[prefix + key] = value
    return flat


def _convert(hint: Any, source: str, value: Any) -> Any:
    if hint == Rules and not isinstance(value, tuple):
        try:
            return parse_rules(str(value))
        except ValueError:
            raise SettingsError(
                f"{source} must be like pods:4:15,percent:100:15 (kind:value:period_s), "
                f"got {value!r}"
            ) from None
    if value == "" and type(None) in typing.get_args(hint):
        return None
    if isinstance(value, str) and typing.get_origin(hint) is tuple:
        value = [part.strip() for part in value.split(",") if part.strip()]
    try:
        return msgspec.convert(value, hint, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(
            f"{source} must be {_expectation(hint, error)}, got {value!r}"
        ) from None


def _expectation(hint: Any, error: msgspec.ValidationError) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    message = str(error).split(" - at ")[0].split(", got ")[0].removeprefix("Expected ")
    for type_name, words in _TYPE_WORDS.items():
        message = message.replace(type_name, words)
    return message


_TYPE_WORDS = {
    "`int`": "an integer",
    "`float`": "a number",
    "`str`": "a string",
    "`bool`": "true or false",
}
