from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kappaflow.settings import Settings
from kappaflow.testing import MOCK_CREATE_TIMEOUT_S, kafka_mock_cluster, postgres

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh data directory, ignoring the caller's environment."""
    return Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for the test session (see kappaflow.testing.postgres):
    its DSN, without a database."""
    try:
        postgres.server_binaries()
    except postgres.PostgresNotFound as error:
        pytest.fail(str(error), pytrace=False)
    with postgres.postgres_server() as dsn:
        yield dsn


@pytest.fixture
def postgres_dsn(postgres_server: str) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server, dropped afterwards."""
    with postgres.postgres_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def backend_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on each store: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return settings
    dsn = request.getfixturevalue("postgres_dsn")
    return settings.replace(store="postgres", postgres_dsn=dsn)


@pytest.fixture
def kafka_bootstrap() -> Iterator[str]:
    """A fresh mock Kafka cluster of librdkafka (3 brokers on 127.0.0.1), held by this
    process for the test; other processes reach it over loopback like a real one."""
    with kafka_mock_cluster() as bootstrap:
        yield bootstrap


@pytest.fixture(params=["embedded+sqlite", "embedded+postgres", "kafka+postgres"])
def stack_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on each stack: the embedded default, then PostgreSQL, then
    Kafka (librdkafka's mock cluster) with PostgreSQL."""
    log, store = request.param.split("+")
    if store == "postgres":
        settings = settings.replace(
            store="postgres", postgres_dsn=request.getfixturevalue("postgres_dsn")
        )
    if log == "kafka":
        settings = settings.replace(
            log="kafka",
            kafka_bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
            kafka_create_timeout_s=MOCK_CREATE_TIMEOUT_S,
        )
    return settings
