"""Helpers for testing apps, ours and users' alike: push events through the real log,
worker and store on a temporary data directory and look at the result tables."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from kappaflow.app import App
from kappaflow.ingest.appender import Appender
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.stream.worker import Worker


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
    are upserted first; ``close`` ends with an idle timeout, closing every session.
    Returns the store."""
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
    worker = Worker(app, target, log, store, settings, range(settings.partitions), lambda: clock[0])
    worker.start()
    while True:
        if restarts and rng.random() < 0.3:
            restarts -= 1
            store.close()
            store = open_store(settings)
            worker = Worker(
                app, target, log, store, settings, range(settings.partitions), lambda: clock[0]
            )
            worker.start()
        if not worker.poll() and worker.caught_up():
            break
    if close:
        clock[0] += settings.idle_timeout_s + 1
        worker.poll()
    return store


def result_tables(settings: Settings, names: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the named tables, in key order, to compare two runs."""
    store = open_store(settings)
    try:
        return {name: store.query(f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4") for name in names}
    finally:
        store.close()
