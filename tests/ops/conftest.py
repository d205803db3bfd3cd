"""The operator tests run on small batches, so that a worker restarted at random polls
(as after crashes) restarts between many of them."""

from __future__ import annotations

import pytest

from kappaflow.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(batch_max_events=50)
