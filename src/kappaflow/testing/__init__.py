"""Helpers for testing apps, ours and users' alike: push events through the real log,
worker and store on a temporary data directory and look at the result tables; wait
for what running processes do; make writes fail for real in a process of their own;
cut a PostgreSQL store's connections. `plugin` is the pytest plugin of fixtures built on
them; `processes` runs kappaflow's commands, `services` its HTTP services in a thread.
Throwaway servers: `postgres` (PostgreSQL) and `kafka` (Apache Kafka); `proxy`, a TCP
proxy that cuts its clients off from a server."""

from __future__ import annotations

import multiprocessing
import random
import resource
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

# The rest of kappaflow is imported where it is used: the pytest plugin (`plugin`)
# imports this package whenever pytest starts, before a run measures coverage.
if TYPE_CHECKING:
    from kappaflow.app import App
    from kappaflow.settings import Settings
    from kappaflow.store import Store

T = TypeVar("T")


def run_events(
    app: App,
    events: Sequence[Any],
    settings: Settings,
    stream: str | None = None,
    restarts: int = 0,
    seed: int = 0,
    reference: Mapping[str, Sequence[tuple[Any, ...]]] | None = None,
    close: bool = False,
) -> Store:
    """Append ``events`` to the stream (default: the app's first) and process them to
    the end with one worker, restarting it ``restarts`` times at random polls (each
    restart restores from the store, as after a crash). ``reference`` rows (a catalog)
    are upserted first; ``close`` ends with idle timeouts that close every session.
    Returns the store."""
    from kappaflow.ingest.appender import Appender
    from kappaflow.log import open_log
    from kappaflow.store import open_store
    from kappaflow.stream.worker import Worker

    target = app.stream(stream) if stream else app.streams[0]
    writer = open_log(settings, writer=True)
    try:
        Appender(writer, target, settings.partitions).append(events)
    finally:
        writer.close()
    rng = random.Random(seed)
    log, store = open_log(settings), open_store(settings)
    if reference:
        store.create_tables(app.all_tables)
        store.upsert(reference)
    clock = [0.0]
    started = time.time()

    def new_worker() -> Worker:
        partitions = range(settings.partitions)
        return Worker(app, target, log, store, settings, partitions, lambda: clock[0],
                      lambda: started + clock[0])  # fmt: skip

    worker = new_worker()
    worker.start()
    while True:
        if restarts and rng.random() < 0.3:
            restarts -= 1
            store.close()
            store = open_store(settings)
            worker = new_worker()
            worker.start()
        if not worker.poll() and worker.caught_up():
            break
    if close:
        # Twice: a worker that restored keys and got no batch since times them from
        # its first batch, which the first idle poll is.
        for _ in range(2):
            clock[0] += settings.idle_timeout_s + 1
            worker.poll()
    return store


def wait_until(
    condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Call ``condition`` every ``interval_s`` until it returns a true value, and return
    that; after ``timeout_s`` fail with AssertionError saying ``what`` did not happen
    and what ``condition`` last returned."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what} (last: {value!r})")
        time.sleep(interval_s)
    return value


DEAD_LETTERS = "SELECT grp, partition, reason, payload FROM kf_dead_letters ORDER BY 1, 2, 4, 3"
"""The dead letters, to compare two runs: without their offsets, which on Kafka depend on
how the events were grouped into appends (each append's commit takes an offset)."""


def result_tables(settings: Settings, names: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the named tables, in key order (dead letters as `DEAD_LETTERS`), to
    compare two runs."""
    from kappaflow.store import open_store

    store = open_store(settings)
    try:
        queries = {name: f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4" for name in names}
        if "kf_dead_letters" in queries:
            queries["kf_dead_letters"] = DEAD_LETTERS
        return {name: store.query(sql) for name, sql in queries.items()}
    finally:
        store.close()


def limit_file_size(limit_bytes: int) -> None:
    """From now on, this process's writes that would grow a file past ``limit_bytes``
    fail with EFBIG, as on a full disk (instead of SIGXFSZ killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def drop_postgres_connections(dsn: str) -> None:
    """End every other session on ``dsn``'s database, as a PostgreSQL restart or a cut
    network would end a store's connection."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def run_in_process(target: Callable[..., object], *args: Any, timeout_s: float = 30) -> None:
    """Run ``target(*args)`` in a process of its own (spawned, so that a limit it sets
    stays there); fail unless it ends without an error within ``timeout_s``."""
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join(timeout_s)
    assert child.exitcode == 0, f"{target.__name__} exited with {child.exitcode}"
