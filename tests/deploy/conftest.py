"""kappaflow's image, built once per test session with podman on a Debian base made
here (no registry is reachable), for the tests that run its roles as containers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kappaflow.testing import containers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    try:
        return containers.engine_environment(tmp_path_factory.mktemp("podman"))
    except containers.ContainersUnavailable as missing:
        pytest.fail(str(missing), pytrace=False)


@pytest.fixture(scope="session")
def image(podman_env: dict[str, str]) -> Iterator[str]:
    """The image of this checkout, removed at the end of the session."""
    name = containers.build_image(podman_env, REPO, containers.base_image(podman_env))
    yield name
    containers.podman(podman_env, "rmi", "--force", name)
