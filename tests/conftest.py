from __future__ import annotations

from pathlib import Path

import pytest

from kappaflow.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh data directory, ignoring the caller's environment."""
    return Settings.load({}, {"data_dir": str(tmp_path / "data"), "partitions": 4})
