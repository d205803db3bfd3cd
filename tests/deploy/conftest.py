"""The deploy tests' tools: the real `kubectl kustomize`, and kappaflow's image, built
once per test session with podman on a Debian base made here (no registry is
reachable), for the tests that run its roles as containers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from kappaflow.testing import containers

REPO = Path(__file__).resolve().parents[2]
Kustomize = Callable[[Path], list[dict]]


@pytest.fixture(scope="session")
def kustomize() -> Kustomize:
    """Builds a kustomization with the real `kubectl kustomize`: its objects."""
    pinned = Path(sys.executable).parent / "kubectl"
    kubectl = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: `make test` installs it into .venv/bin")

    def build(directory: Path) -> list[dict]:
        built = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                               text=True, timeout=60, check=True)  # fmt: skip
        return list(yaml.safe_load_all(built.stdout))

    return build


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
