"""Checkpoints of a SQLite database's WAL beside its writer, on a thread and connection
of their own: a checkpoint copies the pages the WAL holds into the database, and a
writer that ran its own after a commit held up its next batch by the copying (each
150-280 ms at 100,000 heartbeats/s, bench/README.md). SQLite runs a checkpoint
without Python's global lock, so the writer's thread goes on meanwhile."""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing, suppress
from pathlib import Path

log = logging.getLogger("kappaflow.store")


class Checkpointer:
    """Checkpoints ``path`` every ``interval_s`` after its writer wrote (`wrote`), so
    that a page many commits rewrite is copied once an interval, not once a commit.
    PASSIVE: it copies what no reader still needs and waits for no one; a checkpoint
    that cannot run is tried again after the next interval."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self._path = path
        self._interval_s = interval_s
        self._wrote = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wrote(self) -> None:
        """Note that the writer committed; the first time, start checkpointing."""
        self._wrote.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as error:  # the writer's own checkpoints still bound the WAL
            log.warning("SQLite store %s: no checkpoints beside the writer: %s", self._path,
                        error)  # fmt: skip
            return
        with closing(db):
            while not self._stop.wait(self._interval_s):
                if self._wrote.is_set():
                    self._wrote.clear()
                    with suppress(sqlite3.Error):
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
