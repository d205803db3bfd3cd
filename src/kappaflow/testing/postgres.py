"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` into a temporary
directory, started with ``pg_ctl`` on a free port of 127.0.0.1 (a test may stop it
and start it again, as an outage would), stopped and removed afterwards. It never
touches a server the user already runs.

The server binaries are found in ``KAPPAFLOW_PG_BIN`` (a folder), on ``PATH``, or in
Debian's ``/usr/lib/postgresql/<version>/bin`` (package ``postgresql``). PostgreSQL
refuses to run as root; under root the server runs as the unprivileged user
``KAPPAFLOW_PG_USER`` (default ``nobody``), which then owns its directory."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kappaflow.up import free_port

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl, postgres) were not found in "
    "KAPPAFLOW_PG_BIN, on PATH or in /usr/lib/postgresql/*/bin: install them "
    "(Debian: apt-get install postgresql) or point KAPPAFLOW_PG_BIN at their folder"
)

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
}
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""For tests, which never crash the server itself: commits need not reach the disk."""


DEBIAN_VERSIONS = Path("/usr/lib/postgresql")
"""Where Debian's packages keep each major version's binaries, in ``<version>/bin``."""


class PostgresNotFound(RuntimeError):
    """The server binaries are missing; the message says what to install."""


def server_binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``, or `PostgresNotFound`."""
    candidates = []
    if os.environ.get("KAPPAFLOW_PG_BIN"):
        candidates.append(Path(os.environ["KAPPAFLOW_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(
        DEBIAN_VERSIONS.glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresNotFound(INSTALL_HINT)


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    return os.environ.get("KAPPAFLOW_PG_USER", "nobody") if os.geteuid() == 0 else None


class PostgresServer:
    """A running throwaway server (see `postgres_server`), which a test can stop and
    start again to cut its clients off."""

    def __init__(self, root: Path, user: str | None, binaries: Path, durable: bool) -> None:
        self.root, self.user, self.binaries = root, user, binaries
        self.data = root / "data"
        _run(root, user, binaries / "initdb", "-D", self.data, "-U", "postgres",
             "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C")  # fmt: skip
        self.port = _start(root, user, binaries, self.data,
                           SETTINGS if durable else {**SETTINGS, **FAST})  # fmt: skip
        self.stopped = False

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT``: trust authentication, no database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop at once, as a crash would: every connection ends, and new ones are
        refused until `start`."""
        _run(self.root, self.user, self.binaries / "pg_ctl", "-D", self.data,
             "-m", "immediate", "-w", "stop")  # fmt: skip
        self.stopped = True

    def start(self) -> None:
        """Start again after `stop`, on the same port, with the same data."""
        _run(self.root, self.user, self.binaries / "pg_ctl", "-D", self.data,
             "-l", self.root / "server.log", "-w", "-t", "60", "start")  # fmt: skip
        self.stopped = False


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[PostgresServer]:
    """Run a fresh PostgreSQL cluster for the block; yield its server (connect with
    its ``dsn``). Commits are flushed to disk only if ``durable`` (as a benchmark
    needs)."""
    binaries = server_binaries()
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="kappaflow-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    try:
        server = PostgresServer(root, user, binaries, durable)
        try:
            yield server
        finally:
            if not server.stopped:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, user: str | None, *command: str | Path) -> None:
    """Run a server tool as ``user`` in ``root``; fail with its output and the log's end."""
    done = subprocess.run(
        [str(part) for part in command], user=user, capture_output=True, text=True, cwd=root
    )
    if done.returncode != 0:
        log = root / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"{Path(command[0]).name} exited with {done.returncode}: "
            f"{done.stdout}{done.stderr}{tail}"
        )


def _start(
    root: Path, user: str | None, binaries: Path, data: Path, settings: dict[str, str]
) -> int:
    """Start the server on a free port (another one if that port was taken meanwhile)."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        port = free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            conf.write(f"port = {port}\n")
        try:
            _run(root, user, binaries / "pg_ctl", "-D", data, "-l", root / "server.log",
                 "-w", "-t", "60", "start")  # fmt: skip
            return port
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@contextmanager
def postgres_database(server_dsn: str) -> Iterator[str]:
    """A fresh database on the server at ``server_dsn``, dropped afterwards; yields its
    DSN."""
    import psycopg

    name = f"kappaflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server_dsn}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server_dsn}/{name}"
    finally:
        with psycopg.connect(f"{server_dsn}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
