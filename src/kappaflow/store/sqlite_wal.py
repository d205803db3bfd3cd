"""The SQLite store's writers and its write-ahead log: writers take turns through a
lock file beside the database, and the WAL is checkpointed beside them, on a thread and
connection of their own. A checkpoint copies the pages the WAL holds into the
database; a writer that ran its own after a commit held up its next batch by the
copying, and one that cut the WAL back inside its turn held up every writer (each
100-300 ms at 100,000 heartbeats/s, docs/decisions/025-checkpoints-beside-writers.md).
SQLite copies without Python's global lock, so a writer's thread goes on meanwhile."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

log = logging.getLogger("kappaflow.store")
LOOK_S = 0.1
"""How often the checkpoints look at the WAL's size."""


def open_turns(path: Path) -> int:
    """The lock file through which the writers of the database at ``path`` take turns."""
    return os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT, 0o644)


@contextmanager
def writer_turn(turns: int) -> Iterator[None]:
    """Wait for the other writers of the database in the kernel, woken as soon as the
    lock file is free. SQLite's own wait for its write lock sleeps 1, 2, 5 ... 25, 50
    then 100 ms between tries, and wakes up to that late: while two workers commit in
    turn, each waited 45 ms a commit on average, 0.75 s at most. A writer outside
    kappaflow is still held off by SQLite's lock and its busy timeout."""
    fcntl.flock(turns, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(turns, fcntl.LOCK_UN)


def wal_bytes(path: Path) -> int:
    """The size on disk of the WAL of the database at ``path`` (0 if it has none)."""
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


class Checkpointer:
    """Checkpoints the database at ``path`` every ``interval_s`` after its writer wrote
    (`wrote`), so that a page many commits rewrite is copied once an interval, not
    once a commit. While writers take turns one is always writing, and the WAL restarts
    from its start only if a checkpoint copied all of it before the next write: so once
    it is over ``limit_bytes``, a checkpoint copies what it can, then takes a writer's
    turn to copy the rest, the frames written meanwhile. Either waits for a write since
    the checkpoint before: the WAL keeps its size on disk until the next commit starts
    it over, and until then another checkpoint would find nothing to copy. PASSIVE: it
    copies what no reader still needs and waits for no one; a checkpoint that cannot
    run is tried again after the next write."""

    def __init__(self, path: Path, interval_s: float, limit_bytes: int) -> None:
        self._path = path
        self._interval_s = interval_s
        self._limit_bytes = limit_bytes
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
            turns = open_turns(self._path)
        except (sqlite3.Error, OSError) as error:
            log.error("SQLite store %s: no checkpoints, the WAL grows: %s", self._path, error)
            return
        with closing(db):
            try:
                self._checkpoints(db, turns)
            finally:
                os.close(turns)

    def _checkpoints(self, db: sqlite3.Connection, turns: int) -> None:
        last = time.monotonic()
        while not self._stop.wait(LOOK_S):
            if not self._wrote.is_set():
                continue
            if wal_bytes(self._path) > self._limit_bytes:
                self._wrote.clear()
                _checkpoint(db)
                with writer_turn(turns):
                    _checkpoint(db)
            elif time.monotonic() - last >= self._interval_s:
                self._wrote.clear()
                _checkpoint(db)
            else:
                continue
            last = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _checkpoint(db: sqlite3.Connection) -> None:
    with suppress(sqlite3.OperationalError):
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
