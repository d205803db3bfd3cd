"""What benchmarks share: the figure type and timing helpers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
Segments = Counter[tuple[str, str, float, float]]
"""A multiset of watched segments: (user, video, start_s, end_s)."""
KAFKA_LIBS = Path(__file__).resolve().parents[1] / "tools" / "kafka" / "libs"
"""Kafka's jars as `make test` fetches them (``KAFKA_LIBS`` in the environment wins)."""
START_MS = 1_767_225_600_000
"""Where generated event time starts: 2026-01-01T00:00:00Z."""


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """``action()`` and the seconds it took."""
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started
