"""Graceful stop on SIGTERM or Ctrl-C for long-running commands, and children that
end with the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def stop_flag() -> Callable[[], bool]:
    """A flag raised by SIGTERM or SIGINT, for loops that finish their step, then stop."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return lambda: stopping


def die_with_parent(signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` for `subprocess.Popen` (Linux's ``PR_SET_PDEATHSIG``): the child
    gets ``signum`` when the thread that started it ends, as it does when its process
    is killed (start children from a thread that lives as long as the process); at
    once if that happened before the child could ask."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return preexec
