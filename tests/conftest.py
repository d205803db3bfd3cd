from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kappaflow.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh data directory, ignoring the caller's environment."""
    return Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})


POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432, dropped afterwards."""
    import psycopg

    name = f"kappaflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{POSTGRES}/{name}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def backend_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on each store: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return settings
    dsn = request.getfixturevalue("postgres_dsn")
    return settings.replace(store="postgres", postgres_dsn=dsn)
