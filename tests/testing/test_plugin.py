"""kappaflow's pytest plugin as a user's project meets it: the sensors example and its
tests (examples/) in a project of their own, run by pytest in a process of its own,
with kappaflow installed as pip installs this checkout and every warning an error."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TESTS = "test_sensors.py"
FAILING = """
def test_the_stack_is_a_teapot(stack):
    assert stack.client().get("/healthz").status_code == 418


def test_the_app(app):
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project of the sensors app and its tests, in which kappaflow is
    installed: its metadata as pip writes it from pyproject.toml, entry points and all
    (pytest's among them), first on the path."""
    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = pytester.mkdir("installed")
    info = installed / f"kappaflow-{metadata['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: kappaflow\nVersion: {metadata['version']}\n"
    )
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for group, entries in metadata["entry-points"].items()
    ))  # fmt: skip
    path = [str(installed), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    for name in ("sensors.py", TESTS):
        shutil.copy(REPO / "examples" / name, pytester.path)
    return pytester


def run(project: pytest.Pytester, *arguments: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-W", "error", "-rA", *arguments, timeout=240)


def test_a_users_tests_pass_with_the_kafka_ones_skipped_naming_what_is_missing(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_LIBS", raising=False)
    project.makepyprojecttoml('[tool.pytest.ini_options]\nkappaflow_apps = ["sensors"]\n')
    result = run(project)
    result.assert_outcomes(passed=2, skipped=1, warnings=0)
    result.stdout.fnmatch_lines_random([
        f"PASSED {TESTS}::test_alerts_are_counted_once_through_crashes",
        f"PASSED {TESTS}::test_a_sensors_status_is_served",
        f"SKIPPED [[]1[]] {TESTS}:*: no Kafka broker jars: set KAFKA_LIBS to the libs/ folder "
        "of an Apache Kafka 4.x installation (https://kafka.apache.org/downloads)",
    ])  # fmt: skip


def test_a_users_kafka_tests_run_on_a_broker_where_there_is_one(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, kafka_libs: Path
) -> None:
    monkeypatch.setenv("KAFKA_LIBS", str(kafka_libs))
    project.makepyprojecttoml('[tool.pytest.ini_options]\nkappaflow_apps = ["sensors"]\n')
    result = run(project, "-k", "TestOnKafka")
    result.assert_outcomes(passed=1, deselected=2, warnings=0)
    result.stdout.fnmatch_lines(
        [f"PASSED {TESTS}::TestOnKafka::test_alerts_are_counted_once_through_crashes"]
    )


def test_a_failing_test_shows_the_stacks_output_and_the_app_must_be_named(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_failing=FAILING)
    result = run(project, "test_failing.py")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*- kappaflow up-* -*", "*ingest+query serving on http://*"])
    result.stdout.fnmatch_lines([
        "*the app fixture is the one app of the settings, which run *: name yours in the "
        "pytest option kappaflow_apps"
    ])  # fmt: skip


def test_the_docs_show_the_examples_tests_as_they_are() -> None:
    section = (REPO / "docs" / "apps.md").read_text().split("## Testing it")[1]
    shown = section.split("```python\n")[1].split("```")[0].splitlines()
    tests = (REPO / "examples" / TESTS).read_text().splitlines()
    lines = [line.removesuffix(" ...") for line in shown if line.strip() not in ("", "...")]
    assert [line for line in lines if line not in tests] == []
