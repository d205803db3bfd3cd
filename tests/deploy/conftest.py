"""The deploy tests' tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

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
