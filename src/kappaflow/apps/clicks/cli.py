"""The clicks app's command: ``kappaflow demo clicks`` (an entry point in
pyproject.toml)."""

from __future__ import annotations

import sys

import click

from kappaflow.cli import demo_options


@click.command()
@demo_options
def demo(port: int | None, data_dir: str | None) -> None:
    """Replay the packaged 1.usa.gov sample of real clicks: the top countries, browsers
    and target URLs, checked against a direct count over the file."""
    from kappaflow.apps.clicks.demo import ClicksDemo
    from kappaflow.client.demo import run_in_stack

    ok = run_in_stack(lambda settings, stack: ClicksDemo(settings, stack).run(), port, data_dir)
    sys.exit(0 if ok else 1)
