"""kappaflow's pytest plugin, which pytest loads wherever kappaflow is installed (the
``pytest11`` entry point ``kappaflow``; ``-p no:kappaflow`` turns it off): fixtures
for testing apps. `settings` names the apps of the pytest option ``kappaflow_apps``;
`app`, `run_events` and `stack` run them on those settings, which a test overrides by
defining a fixture ``settings`` of its own (on `kafka_bootstrap`'s broker, say). The
output of the processes a test ran is shown when it fails.

The rest of kappaflow is imported when a fixture is used, not when pytest starts."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kappaflow.app import App
    from kappaflow.settings import Settings
    from kappaflow.store import Store
    from kappaflow.testing.kafka import KafkaCluster
    from kappaflow.testing.processes import Running

OUTPUTS = pytest.StashKey[list[Path]]()
"""The output files of the processes a test ran."""
OUTPUT_SHOWN = 10_000
"""How much of the end of each output a failed test's report shows, in characters."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "kappaflow_apps",
        "apps of the settings fixture (KAPPAFLOW_APPS): installed apps' names or "
        "importable modules; none: every installed app",
        type="args",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for path in item.stash.get(OUTPUTS, []):
            text = path.read_text(errors="replace") if path.exists() else ""
            report.sections.append((f"kappaflow {path.stem}", text[-OUTPUT_SHOWN:]))
    return report


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on a fresh data directory (``tmp_path / "data"``: the embedded log and
    SQLite), 4 partitions, the apps of the ``kappaflow_apps`` option; ``KAPPAFLOW_*``
    variables of the environment are ignored."""
    from kappaflow.settings import Settings

    apps = tuple(request.config.getini("kappaflow_apps"))
    return Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4}).replace(
        apps=apps
    )


@pytest.fixture
def app(settings: Settings) -> App:
    """The app of the settings, loaded: the one ``kappaflow_apps`` names."""
    from kappaflow.app import load_apps

    apps = load_apps(settings)
    if len(apps) != 1:
        names = ", ".join(app.name for app in apps) or "none"
        pytest.fail(f"the app fixture is the one app of the settings, which run {names}: "
                    "name yours in the pytest option kappaflow_apps", pytrace=False)  # fmt: skip
    return apps[0]


@pytest.fixture(name="run_events")
def run_events_fixture(app: App, settings: Settings) -> Iterator[Callable[..., Store]]:
    """``run_events(events, restarts=3)``: `kappaflow.testing.run_events` on the test's
    app and settings (its other options too): the events appended to the app's first
    stream (or ``stream=``) and processed by a worker restarted ``restarts`` times, as
    after crashes. Returns the store, closed after the test."""
    from kappaflow.testing import run_events

    stores: list[Store] = []

    def run(events: Sequence[Any], **options: Any) -> Store:
        stores.append(run_events(app, events, settings, **options))
        return stores[-1]

    yield run
    for store in stores:
        store.close()


@pytest.fixture
def kappaflow(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., AbstractContextManager[Running]]:
    """``with kappaflow("up", env=settings.to_environ()) as running:`` runs a kappaflow
    command as a process, on a free port, until it answers; it stops after the block
    (`kappaflow.testing.processes.run_kappaflow`)."""
    from kappaflow.testing.processes import run_kappaflow

    outputs = request.node.stash.setdefault(OUTPUTS, [])

    @contextmanager
    def run(*arguments: str, **options: Any) -> Iterator[Running]:
        with run_kappaflow(tmp_path, *arguments, **options) as running:
            outputs.append(running.output)
            yield running

    return run


@pytest.fixture
def stack(
    kappaflow: Callable[..., AbstractContextManager[Running]], settings: Settings
) -> Iterator[Running]:
    """`kappaflow up` on the test's settings (their apps, data directory, log and store)
    on a free port of 127.0.0.1, ready: ``stack.client()`` is an HTTP client of it,
    ``stack.wait_for_no_lag()`` waits until what was posted is in the results. It
    stops after the test."""
    with kappaflow("up", env=settings.to_environ()) as running:
        yield running


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The folder of Kafka's jars, from ``KAFKA_LIBS``. Without it, Java or kappaflow's
    kafka extra, the tests that need a broker are skipped, saying what is missing."""
    from kappaflow.testing import kafka

    if importlib.util.find_spec("confluent_kafka") is None:
        pytest.skip("no Kafka client: pip install 'kappaflow[kafka]'")
    try:
        return kafka.kafka_libs()
    except kafka.KafkaNotFound as missing:
        pytest.skip(str(missing))


@pytest.fixture
def kafka_broker(kafka_libs: Path) -> Iterator[KafkaCluster]:
    """A fresh one-broker Kafka cluster for the test: the apps' topics and consumer
    groups start empty."""
    from kappaflow.testing import kafka

    with kafka.kafka_cluster(kafka_libs) as cluster:
        yield cluster


@pytest.fixture
def kafka_bootstrap(kafka_broker: KafkaCluster) -> str:
    """The bootstrap servers of the test's fresh one-broker cluster."""
    return kafka_broker.bootstrap_servers
