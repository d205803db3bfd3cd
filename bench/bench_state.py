"""Keyed state at 100,000 keys, each batch touching 1% of them: the sensors example
(examples/sensors.py) on its `State`, whose commit writes the keys whose value changed,
against the same function on a dict that is written whole with each commit (the easy
path before `State`). Per batch: the bytes of state committed, the time to process it
and encode the state, and that and the commit to SQLite (the state log's merges
included); and the time a worker takes to restore the partition (open the store, claim
and decode)."""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from common import START_MS, Figure
from rich.console import Console

from kappaflow.app import Batch, FunctionProcessor, Output, Processor
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import PartitionCommit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import sensors

KEYS = 100_000
TOUCHED = 0.01
BATCHES = 200
RESTORES = 5
"""Restores timed, the fastest kept: the others are the machine's noise."""
GROUP = "sensors.readings"
console = Console()


class Sensors(dict[str, sensors.Sensor]):
    """A dict the example's function can run on."""

    set = dict.__setitem__


class WholeState:
    """A `Processor` over a dict of the keys, persisted whole with each commit."""

    def __init__(self, process: Callable[[Sensors, Batch], Output[Sensors]]) -> None:
        self.process = process
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(dict[str, sensors.Sensor]).decode

    def initial_state(self) -> Sensors:
        return Sensors()

    def encode(self, state: Sensors) -> bytes:
        return self._encode(state)

    def changed_keys(self, state: Sensors) -> dict[str, bytes | None]:
        return {}

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> Sensors:
        return Sensors(self._decode(data))


def run(scale: float) -> list[Figure]:
    keys = max(10_000, round(KEYS * scale))
    touched = round(keys * TOUCHED)
    watch = partial(sensors.watch, sensors.SensorSettings().limit_c)
    processors: dict[str, Processor[Any]] = {
        "State": FunctionProcessor(watch, sensors.Sensor),
        "whole state": WholeState(watch),
    }
    measured = {name: measure(processor, keys, touched) for name, processor in processors.items()}
    for name, (written, processed, committed, restore) in measured.items():
        console.print(f"{name}: {written:,.0f} bytes, {processed * 1000:.2f} ms processed and "
                      f"{committed * 1000:.2f} ms committed a batch, restored in "
                      f"{restore * 1000:.0f} ms")  # fmt: skip
    state, whole = measured["State"], measured["whole state"]
    baseline = "whole state written"
    at = f"{keys // 1000}k keys"
    names = (f"State, {at}: bytes committed a batch", f"State, {at}: ms to process a batch",
             f"State, {at}: ms to process and commit", f"State, {at}: ms to restore")  # fmt: skip
    units = ("bytes", "ms", "ms", "ms")
    scales = (1, 1000, 1000, 1000)
    return [
        Figure(name, value * scale, unit, baseline, base * scale)
        for name, value, base, unit, scale in zip(names, state, whole, units, scales, strict=True)
    ]


def measure(
    processor: Processor[Any], keys: int, touched: int
) -> tuple[float, float, float, float]:
    """Bytes of state committed, seconds to process and encode, and seconds to process
    and commit, a batch of ``touched`` readings of as many sensors once all ``keys``
    are in the state; seconds to restore it."""
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp:
        settings = Settings.load({}, {"data_dir": tmp})
        store = open_store(settings)
        store.create_tables([sensors.LATEST, sensors.ALERTS])
        generation = store.claim(GROUP, [0], "bench")[0].generation
        state, offset = processor.initial_state(), 0

        def batch(ids: list[int]) -> tuple[int, float, float]:
            nonlocal state, offset
            readings = [sensors.Reading(f"sensor-{i}", rng.uniform(20, 40), 0) for i in ids]
            times = [START_MS + offset + n for n in range(len(ids))]
            offsets = list(range(offset, offset + len(ids)))
            offset += len(ids)
            started = time.perf_counter()
            output = processor.process(state, Batch(0, offsets, readings, times, 0))
            state = output.state
            data, changed = processor.encode(state), processor.changed_keys(state)
            processed = time.perf_counter()
            commit = PartitionCommit(0, generation, offset, data, changed)
            store.commit(GROUP, [commit], output.rows)
            written = len(data) + sum(len(k) + len(v or b"") for k, v in changed.items())
            return written, processed - started, time.perf_counter() - started

        for first in range(0, keys, 10_000):
            batch(list(range(first, min(first + 10_000, keys))))
        measured = [batch(rng.sample(range(keys), touched)) for _ in range(BATCHES)]
        store.close()
        restores = []
        for _ in range(RESTORES):
            started = time.perf_counter()
            store = open_store(settings)
            claim = store.claim(GROUP, [0], "bench")[0]
            restored = processor.decode(claim.state or b"", claim.keys)
            restores.append(time.perf_counter() - started)
            assert len(restored) == keys
            store.close()
    return (*(sum(column) / BATCHES for column in zip(*measured, strict=True)), min(restores))
