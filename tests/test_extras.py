"""The optional backends and the simulator's pictures without their extras installed:
kappaflow's core imports none of their libraries, and using one says which extra to
install."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import kappaflow
from kappaflow.cli import main
from kappaflow.errors import MissingExtra
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store

OPTIONAL = {"kafka": "confluent_kafka", "postgres": "psycopg", "pictures": "matplotlib"}
BACKENDS = {"kappaflow.log.kafka", "kappaflow.store.postgres"}


def without(monkeypatch: pytest.MonkeyPatch, library: str, *importers: str) -> None:
    """Makes ``library`` fail to import, as when it is not installed, and forgets the
    kappaflow modules that imported it, so that they import it again."""
    monkeypatch.setitem(sys.modules, library, None)
    for module in importers:
        monkeypatch.delitem(sys.modules, module, raising=False)


def test_the_core_imports_no_optional_library() -> None:
    """Every module but the backends (and the entry point, which runs the CLI) imports
    with the optional libraries absent, and imports none of them."""
    modules = [
        info.name
        for info in pkgutil.walk_packages(kappaflow.__path__, "kappaflow.")
        if info.name not in {*BACKENDS, "kappaflow.__main__"}
    ]
    program = (
        "import importlib, sys\n"
        f"for library in {sorted(OPTIONAL.values())!r}: sys.modules[library] = None\n"
        f"for module in {modules!r}: importlib.import_module(module)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(OPTIONAL.values())!r}"
        " and sys.modules[m] is not None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(modules) > 40  # the walk found the package's modules


def test_the_kafka_log_without_its_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    without(monkeypatch, "confluent_kafka", "kappaflow.log.kafka")
    with pytest.raises(MissingExtra, match=r"pip install 'kappaflow\[kafka\]'") as raised:
        open_log(settings.replace(log="kafka"))
    assert str(raised.value) == (
        "the Kafka log (KAPPAFLOW_LOG=kafka) needs the kafka extra: pip install 'kappaflow[kafka]'"
    )


def test_the_postgres_store_without_its_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    without(monkeypatch, "psycopg", "kappaflow.store.postgres")
    with pytest.raises(MissingExtra, match=r"pip install 'kappaflow\[postgres\]'") as raised:
        open_store(settings.replace(store="postgres", postgres_dsn="postgresql://127.0.0.1/x"))
    assert raised.value.extra == "postgres"


def test_the_simulator_without_the_pictures_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    without(monkeypatch, "matplotlib")
    picture = tmp_path / "surge.png"
    result = CliRunner().invoke(
        main, ["scale", "simulate", "--load", "surge", "--capacity", "15000", "--output",
               str(picture)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "the simulator's picture needs the pictures extra" in result.output
    assert "pip install 'kappaflow[pictures]'" in result.output
    assert not picture.exists()


def test_a_worker_on_kafka_without_its_extra_exits_with_the_message(tmp_path: Path) -> None:
    """The start-up error of a worker process, as for any other: one line, exit 1."""
    program = (
        "import sys\n"
        "sys.modules['confluent_kafka'] = None\n"
        "from kappaflow.cli import main\n"
        "main(['worker', '--until-caught-up'])\n"
    )
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAPPAFLOW_")},
        "KAPPAFLOW_LOG": "kafka",
        "KAPPAFLOW_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-c", program], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        "kappaflow worker: the Kafka log (KAPPAFLOW_LOG=kafka) needs the kafka extra: "
        "pip install 'kappaflow[kafka]'"
    )
