"""The windows an aggregate groups a key's events in, by event time (ms): `Tumbling`
and `Hopping` windows are fixed spans, `Sliding` windows end at each event, and
`Session` windows end after a gap without events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kappaflow.errors import AppError


def _positive(window: object, **spans: int) -> None:
    for name, span in spans.items():
        if not (isinstance(span, int) and span > 0):
            raise AppError(f"{type(window).__name__}: {name} must be a positive whole "
                           f"number of milliseconds, got {span!r}")  # fmt: skip


@dataclass(frozen=True)
class Tumbling:
    """Back-to-back windows of ``size_ms``: [k*size, (k+1)*size) since the epoch."""

    size_ms: int

    def __post_init__(self) -> None:
        _positive(self, size_ms=self.size_ms)

    def starts(self, time_ms: int) -> tuple[int, ...]:
        """The start of each window holding ``time_ms``."""
        return (time_ms - time_ms % self.size_ms,)


@dataclass(frozen=True)
class Hopping:
    """Windows of ``size_ms`` starting every ``every_ms`` (a divisor of the size): an
    event falls in size/every of them."""

    size_ms: int
    every_ms: int

    def __post_init__(self) -> None:
        _positive(self, size_ms=self.size_ms, every_ms=self.every_ms)
        if self.size_ms % self.every_ms:
            raise AppError(f"Hopping: every_ms ({self.every_ms}) must divide size_ms "
                           f"({self.size_ms})")  # fmt: skip

    def starts(self, time_ms: int) -> tuple[int, ...]:
        last = time_ms - time_ms % self.every_ms
        return tuple(range(last - self.size_ms + self.every_ms, last + 1, self.every_ms))


@dataclass(frozen=True)
class Sliding:
    """A window ending at each event of a key: the key's events in (t - size_ms, t],
    written with ``end_ms`` = t, the key's running aggregate over the last
    ``size_ms``."""

    size_ms: int

    def __post_init__(self) -> None:
        _positive(self, size_ms=self.size_ms)


@dataclass(frozen=True)
class Session:
    """A key's events with no more than ``gap_ms`` between one and the next; a session
    ends when the key's event time passes its last event by more than the gap. The
    key's own clock judges lateness (``lateness_ms``), and a session closes after
    ``idle_ms`` (on the worker's clock) without events of its key."""

    gap_ms: int
    lateness_ms: int = 30_000
    idle_ms: int = 30_000

    def __post_init__(self) -> None:
        _positive(self, gap_ms=self.gap_ms, idle_ms=self.idle_ms)


Window = Tumbling | Hopping | Sliding | Session
Emit = Literal["final", "update"]
"""When a window's row is written: once, when it closes, or with each batch that
changes it."""
