"""`kappaflow up` and the demo autoscale workers that share one machine's CPUs."""

from __future__ import annotations

import pytest

from kappaflow.settings import Settings
from kappaflow.up import one_machine


@pytest.mark.parametrize(("cpus", "configured", "expected"), [(2, 100, 2), (8, 4, 4), (None, 3, 1)])
def test_workers_are_capped_at_one_per_cpu(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, configured: int, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    settings = Settings.load({}, {"max_replicas": configured})
    capped = one_machine(settings)
    assert capped.scaling.max_replicas == expected
    assert capped.replace(max_replicas=configured) == settings  # nothing else changes
