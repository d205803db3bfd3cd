"""Graceful stop on SIGTERM or Ctrl-C for long-running commands."""

from __future__ import annotations

import signal
from collections.abc import Callable


def stop_flag() -> Callable[[], bool]:
    """A flag raised by SIGTERM or SIGINT, for loops that finish their step, then stop."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return lambda: stopping
