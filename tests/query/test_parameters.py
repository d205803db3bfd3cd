"""What every query route shares (the real ASGI app in-process, on each store)."""

from __future__ import annotations

import pytest

from kappaflow.settings import Settings
from kappaflow.testing.services import serving


@pytest.mark.parametrize(
    "path",
    [
        "/v1/progress/a%00b/v",
        "/v1/progress/u/%1b",
        "/v1/reports/royalties?from=2026-01-01&to=2026-01-02&license_holder=h%00",
        "/v1/clicks/counts?dimension=country&from=%7f",
    ],
)
def test_parameters_with_control_characters_are_400_naming_them(
    backend_settings: Settings, path: str
) -> None:
    """PostgreSQL refuses a NUL in text: such a query answered 500 there."""
    with serving(backend_settings, ("query",)) as client:
        answer = client.get(path)
    assert answer.status_code == 400, answer.text
    assert "may not hold control characters" in answer.json()["error"]
