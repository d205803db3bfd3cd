"""Where results, operator state and committed offsets live. `open_store` is the one
place that names a backend."""

from __future__ import annotations

from kappaflow.settings import Settings
from kappaflow.store.base import Claim, DeadLetter, PartitionCommit, Store, Table

__all__ = ["Claim", "DeadLetter", "PartitionCommit", "Store", "Table", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store the settings name."""
    if settings.store == "postgres":
        from kappaflow.store.postgres import PostgresStore

        return PostgresStore(settings.postgres_dsn)
    from kappaflow.store.sqlite import SQLiteStore

    return SQLiteStore(settings.sqlite_path)
