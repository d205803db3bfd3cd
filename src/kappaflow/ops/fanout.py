"""Several processors reading one stream: each gets every batch, and their rows and
states are committed together."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from kappaflow.app import Batch, Output, Processor, Rows, closes_idle
from kappaflow.errors import StateFormatError

if TYPE_CHECKING:
    from kappaflow.app import Stream
    from kappaflow.store.tables import Table


def once(letters: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """The dead letters with each offset once (its first reason), by offset."""
    first: dict[int, str] = {}
    for offset, reason in letters:
        first.setdefault(offset, reason)
    return sorted(first.items())


class Fanout:
    """A `Processor` running ``processors`` over each batch (an app's list of processors
    for a stream becomes one). Each one's keys are kept under its place in the list
    (``0:key``), so the list's order is part of the stored state. An event one of them
    refuses goes to the dead letters once, with the first reason; the others' rows
    still count it. Lateness is judged per key only if all of them judge it so;
    otherwise every one gets only the events at or above the partition's watermark.
    The empty batches of the idle time passing go to those that close what went idle
    (`closes_idle`)."""

    def __init__(self, processors: Sequence[Processor[Any]]) -> None:
        self.processors = list(processors)
        self.judges_lateness = all(getattr(p, "judges_lateness", False) for p in processors)
        self._closing = list(map(closes_idle, processors))
        self.closes_idle = any(self._closing)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(list[bytes]).decode

    @property
    def tables(self) -> tuple[Table[Any], ...]:
        return tuple(table for p in self.processors for table in getattr(p, "tables", ()))

    @property
    def lookups(self) -> tuple[Any, ...]:
        return tuple(lookup for p in self.processors for lookup in getattr(p, "lookups", ()))

    def bind(self, stream: Stream) -> None:
        for processor in self.processors:
            bind = getattr(processor, "bind", None)
            if bind is not None:
                bind(stream)

    def initial_state(self) -> list[Any]:
        return [processor.initial_state() for processor in self.processors]

    def process(self, state: list[Any], batch: Batch) -> Output[list[Any]]:
        rows: Rows = {}
        letters: list[tuple[int, str]] = []
        for at, processor in enumerate(self.processors):
            if not batch.events and not self._closing[at]:
                continue  # the idle time passing: for those that close what went idle
            output = processor.process(state[at], batch)
            state[at] = output.state
            for table, table_rows in output.rows.items():
                rows.setdefault(table, []).extend(table_rows)
            letters += output.dead_letters
        return Output(state, rows, once(letters) if letters else ())

    def key_count(self, state: list[Any]) -> int:
        """The keys of those of the processors that count theirs."""
        return sum(p.key_count(s) for p, s in zip(self.processors, state, strict=True)
                   if hasattr(p, "key_count"))  # fmt: skip

    def encode(self, state: list[Any]) -> bytes:
        return self._encode([p.encode(s) for p, s in zip(self.processors, state, strict=True)])

    def changed_keys(self, state: list[Any]) -> dict[str, bytes | None]:
        return {f"{at}:{key}": value
                for at, (p, s) in enumerate(zip(self.processors, state, strict=True))
                for key, value in p.changed_keys(s).items()}  # fmt: skip

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> list[Any]:
        parts = self._decode(data) if data else [b""] * len(self.processors)
        if len(parts) != len(self.processors):
            raise StateFormatError(f"the stored state is of {len(parts)} processors, the app "
                                   f"has {len(self.processors)} for the stream")  # fmt: skip
        split: list[dict[str, bytes]] = [{} for _ in self.processors]
        for key, value in keys.items():
            at, _, own = key.partition(":")
            if not at.isdigit() or int(at) >= len(split):
                raise StateFormatError(f"state key {key!r} is of no processor of the stream")
            split[int(at)][own] = value
        return [p.decode(part, own) for p, part, own in zip(self.processors, parts, split,
                                                             strict=True)]  # fmt: skip
