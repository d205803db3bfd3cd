"""Each key's own event clock, for keyed operators that judge lateness per key: an
event is late only against the latest event of its own key, so that no client's clock
costs another key its events."""

from __future__ import annotations

import numpy as np


def latest_before(codes: np.ndarray, times: np.ndarray, clocks: np.ndarray) -> np.ndarray:
    """For each event of a batch (in arrival order; ``codes`` its key codes, ``times``
    its event times), the latest event time its key had before it: ``clocks[code]``
    (the key's clock before the batch) or that of an earlier event of the batch."""
    before = clocks[codes]
    if len(times) < 2:
        return before
    order = np.argsort(codes, kind="stable")  # each key's events together, in order
    code, time = codes[order], times[order]
    first = np.ones(len(code), bool)
    first[1:] = code[1:] != code[:-1]
    group = np.cumsum(first) - 1
    low = int(time.min())
    span = int(time.max()) - low + 1
    if (int(group[-1]) + 1) * span < 1 << 62:
        # The running maximum of (group, time) as one number: a group's numbers are all
        # above the groups' before it, so the maximum restarts with each group.
        composite = group * span + (time - low)
        running = np.maximum.accumulate(composite) - group * span + low
    else:  # times too far apart for one number: key by key
        running = time.copy()
        for start, end in zip(*_bounds(first), strict=True):
            running[start:end] = np.maximum.accumulate(time[start:end])
    earlier = np.empty(len(code), np.int64)
    earlier[first] = np.iinfo(np.int64).min
    earlier[~first] = running[np.flatnonzero(~first) - 1]
    result = np.empty(len(codes), np.int64)
    result[order] = np.maximum(before[order], earlier)
    return result


def late_reason(time_ms: int, latest_ms: int, lateness_ms: int) -> str:
    """The dead letter's reason for an event at ``time_ms`` refused as late."""
    return (f"late: event time {time_ms} is more than {lateness_ms} ms before {latest_ms}, "
            "the latest of its key")  # fmt: skip


def _bounds(first: np.ndarray) -> tuple[list[int], list[int]]:
    starts = np.flatnonzero(first)
    return starts.tolist(), [*starts[1:].tolist(), len(first)]
