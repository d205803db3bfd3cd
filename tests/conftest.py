"""The suite's own fixtures: PostgreSQL, the stores and stacks each test runs on. The
fixtures a user's tests have too (`settings`, `kappaflow`, the Kafka broker) are those of
kappaflow's pytest plugin, `kappaflow.testing.plugin`; `pytester` tests the plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from kappaflow.settings import Settings
from kappaflow.testing import kafka, postgres

REPO = Path(__file__).resolve().parents[1]
KAFKA_LIBS = REPO / "tools" / "kafka" / "libs"
pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for the test session (see kappaflow.testing.postgres):
    its DSN, without a database."""
    try:
        postgres.server_binaries()
    except postgres.PostgresNotFound as error:
        pytest.fail(str(error), pytrace=False)
    with postgres.postgres_server() as server:
        yield server.dsn


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


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """Kafka's jars: ``KAFKA_LIBS``, else those `make test` fetched with Maven. The suite
    needs them: where kappaflow's pytest plugin skips a user's Kafka tests, ours fail."""
    try:
        return kafka.kafka_libs(KAFKA_LIBS)
    except kafka.KafkaNotFound as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def shared_kafka(kafka_libs: Path) -> Iterator[kafka.KafkaCluster]:
    """One Kafka broker for the test session, for tests that name topics of their own."""
    with kafka.kafka_cluster(kafka_libs) as cluster:
        yield cluster


@pytest.fixture(params=["embedded+sqlite", "embedded+postgres", "kafka+postgres"])
def stack_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on each stack: the embedded default, then PostgreSQL, then
    Kafka (a fresh broker; topics of the default partition count) with PostgreSQL."""
    log, store = request.param.split("+")
    if store == "postgres":
        settings = settings.replace(
            store="postgres", postgres_dsn=request.getfixturevalue("postgres_dsn")
        )
    if log == "kafka":
        settings = settings.replace(
            log="kafka",
            kafka_bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
            partitions=Settings().partitions,
        )
    return settings


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A certificate of 127.0.0.1 and localhost from a throwaway certificate authority
    (trustme): the settings that serve HTTPS with it and trust it."""
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    where = tmp_path_factory.mktemp("tls")
    files = {"tls_cert_file": where / "cert.pem", "tls_key_file": where / "key.pem",
             "tls_ca_file": where / "ca.pem"}  # fmt: skip
    issued.cert_chain_pems[0].write_to_path(str(files["tls_cert_file"]))
    issued.private_key_pem.write_to_path(str(files["tls_key_file"]))
    authority.cert_pem.write_to_path(str(files["tls_ca_file"]))
    return {name: str(path) for name, path in files.items()}
