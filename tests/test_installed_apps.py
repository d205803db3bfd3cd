"""Apps are installed apps: the built-in ones, and a user's package alike, register
their app, commands and demo as entry points, which kappaflow finds without naming
them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from kappaflow.app import load_apps
from kappaflow.cli import main
from kappaflow.settings import Settings

PACKAGE = '''
import click, msgspec
from kappaflow.app import App, FunctionProcessor, Stream
from kappaflow.store.base import Table

class View(msgspec.Struct):
    page: str
    ts: int

class Pages(msgspec.Struct, frozen=True):
    top: int = 10

def create_app(settings):
    own = settings.app("pageviews", Pages)
    views = Stream("views", View, key="page", time="ts")
    process = FunctionProcessor(lambda state, batch: {}, int)
    table = Table("page_views", columns=(("page", "TEXT"),), key=("page",))
    return App("pageviews", [views], [table], {"views": process}, settings=own)

@click.command()
def command():
    """Pages viewed most."""

@click.command()
def demo():
    """Views of a few pages."""
'''
ENTRY_POINTS = """\
[kappaflow.apps]
pageviews = pageviews

[kappaflow.commands]
pages = pageviews:command

[kappaflow.demos]
pageviews = pageviews:demo
"""
LOAD = """
from kappaflow.app import load_apps
from kappaflow.settings import Settings
apps = load_apps(Settings.load())
print(sorted(app.name for app in apps), apps[0].settings)
"""


def test_the_built_in_apps_commands_and_demos_are_installed(settings: Settings) -> None:
    everything = load_apps(settings.replace(apps=()))
    assert sorted(app.name for app in everything) == ["clicks", "video"]
    commands = CliRunner().invoke(main, ["--help"]).output
    assert "catalog" in commands and "loadgen" in commands
    demos = CliRunner().invoke(main, ["demo", "--help"]).output
    assert "video " in demos and "clicks " in demos
    assert CliRunner().invoke(main, ["demo", "video", "--help"]).exit_code == 0


def test_a_package_installed_beside_kappaflow_adds_its_app_command_and_demo(
    tmp_path: Path,
) -> None:
    # A package as pip installs it: its module, and its metadata naming the entry points.
    (tmp_path / "pageviews.py").write_text(PACKAGE)
    metadata = tmp_path / "pageviews-1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: pageviews\nVersion: 1.0\n")
    (metadata / "entry_points.txt").write_text(ENTRY_POINTS)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("KAPPAFLOW_")},
               "PYTHONPATH": path, "KAPPAFLOW_DATA_DIR": str(tmp_path / "data")}  # fmt: skip

    def kappaflow(*arguments: str, **variables: str) -> str:
        done = subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                              env={**environ, **variables}, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "Pages viewed most." in kappaflow("-m", "kappaflow", "--help")
    assert "Views of a few pages." in kappaflow("-m", "kappaflow", "demo", "--help")
    every = kappaflow("-c", LOAD, KAPPAFLOW_APPS="pageviews", KAPPAFLOW_PAGEVIEWS_TOP="3")
    assert every.strip() == "['pageviews'] Pages(top=3)"
    assert "'clicks', 'pageviews', 'video'" in kappaflow("-c", LOAD)
