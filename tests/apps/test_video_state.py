"""A video key's packed state: each key's bytes are its head, its closed segments and
its pending events, record after record, and they unpack to the same records."""

from __future__ import annotations

import numpy as np

from kappaflow.apps.video.state import DONE, FORMAT, HEAD, PENDING, is_packed, packed, unpacked

SESSION_FIELDS = [name for name in HEAD.names if name != "format"]


def test_each_keys_bytes_are_its_records_in_order_and_unpack_to_them() -> None:
    rng = np.random.default_rng(3)
    keys = 500
    head = np.zeros(keys, HEAD)
    head["last_ts"] = rng.integers(0, 1 << 42, keys)
    head["high"] = rng.random(keys) * 3600
    head["done"] = rng.integers(0, 4, keys) * (rng.random(keys) < 0.3)  # mostly none
    counts = rng.integers(0, 9, keys)
    done = np.zeros(int(head["done"].sum()), DONE)
    done["low"], done["end_ms"] = rng.random(len(done)), rng.integers(0, 1 << 42, len(done))
    pending = np.zeros(int(counts.sum()), PENDING)
    pending["ts"], pending["rank"] = rng.integers(0, 1 << 42, len(pending)), 3
    pending["position"] = rng.random(len(pending))

    values = packed(head.copy(), done, pending, counts)

    done_ends, pending_ends = np.cumsum(head["done"]), np.cumsum(counts)
    for k, value in enumerate(values):
        expected_head = head[k : k + 1].copy()
        expected_head["format"] = FORMAT
        own_done = done[done_ends[k] - head["done"][k] : done_ends[k]]
        own_pending = pending[pending_ends[k] - counts[k] : pending_ends[k]]
        assert value == expected_head.tobytes() + own_done.tobytes() + own_pending.tobytes()
        assert is_packed(value)
    heads, done_back, pending_back, counts_back = unpacked(values)
    assert (heads[SESSION_FIELDS] == head[SESSION_FIELDS]).all()
    assert (heads["done"] == head["done"]).all()
    assert done_back.tobytes() == done.tobytes()
    assert pending_back.tobytes() == pending.tobytes()
    assert counts_back.tolist() == counts.tolist()


def test_no_keys_pack_to_nothing() -> None:
    none = np.zeros(0, np.int64)
    assert packed(np.zeros(0, HEAD), np.zeros(0, DONE), np.zeros(0, PENDING), none) == []
