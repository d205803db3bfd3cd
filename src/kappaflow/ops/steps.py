"""Steps before an operator: `Filter`, `Map`, `FlatMap` and `Join` (with reference
data), each over a batch's events one at a time; `Pipeline` runs them and hands what
is left to its processors. An event keeps its offset and event time through the steps,
so that what an operator refuses is dead-lettered as the record it came from."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from kappaflow.app import Batch, Delegating, Lookup, Output, Processor, closes_idle
from kappaflow.errors import AppError
from kappaflow.ops.fanout import Fanout, once
from kappaflow.ops.shape import value_getter

if TYPE_CHECKING:
    from kappaflow.app import Stream
    from kappaflow.store.tables import Table


class Step(Protocol):
    def apply(self, batch: Batch) -> tuple[Batch, list[tuple[int, str]]]:
        """The batch after the step, and (offset, reason) of the events it refused."""
        ...


class Filter:
    """Keeps the events for which ``keep(event)`` is true; the others are dropped (not
    dead letters: they are not the app's)."""

    def __init__(self, keep: Callable[[Any], bool]) -> None:
        self.keep = keep

    def apply(self, batch: Batch) -> tuple[Batch, list[tuple[int, str]]]:
        keep = self.keep
        kept = [at for at, event in enumerate(batch.events) if keep(event)]
        if len(kept) == len(batch.events):
            return batch, []
        return _taken(batch, kept), []


class Map:
    """Each event becomes ``change(event)``."""

    def __init__(self, change: Callable[[Any], Any]) -> None:
        self.change = change

    def apply(self, batch: Batch) -> tuple[Batch, list[tuple[int, str]]]:
        return batch._replace(events=list(map(self.change, batch.events))), []


class FlatMap:
    """Each event becomes the events ``expand(event)`` yields (none, one or several),
    each with the event's offset and time."""

    def __init__(self, expand: Callable[[Any], Iterable[Any]]) -> None:
        self.expand = expand

    def apply(self, batch: Batch) -> tuple[Batch, list[tuple[int, str]]]:
        offsets: list[int] = []
        events: list[Any] = []
        times: list[int] = []
        for offset, event, time_ms in zip(batch.offsets, batch.events, batch.times_ms,
                                          strict=True):  # fmt: skip
            before = len(events)
            events.extend(self.expand(event))
            offsets += [offset] * (len(events) - before)
            times += [time_ms] * (len(events) - before)
        return batch._replace(offsets=offsets, events=events, times_ms=times), []


class Join:
    """Joins each event with reference data: ``lookup`` (the app's, whether listed in
    its ``lookups`` or not), whose data is a mapping, is looked up as it was at the
    event's time (`Lookup.at`: of a table with history, the upload in force then) by the
    event's ``on`` (a field, or a function of the event), and the event becomes
    ``combine(event, found)``. An event whose value is not found is, by ``missing``:
    refused, into the dead letters with reason ``no match`` (the default); dropped; or
    combined with None."""

    def __init__(
        self,
        lookup: Lookup[Mapping[Any, Any]],
        on: str | Callable[[Any], Hashable],
        combine: Callable[[Any, Any], Any],
        missing: Literal["refuse", "drop", "keep"] = "refuse",
    ) -> None:
        if missing not in ("refuse", "drop", "keep"):
            raise AppError(f"Join: missing is 'refuse', 'drop' or 'keep', got {missing!r}")
        self.lookup, self.combine, self.missing = lookup, combine, missing
        self.on = value_getter(on) if isinstance(on, str) else on

    def apply(self, batch: Batch) -> tuple[Batch, list[tuple[int, str]]]:
        in_force, on, combine = self.lookup.at, self.on, self.combine
        kept: list[int] = []
        events: list[Any] = []
        refused: list[tuple[int, str]] = []
        for at, (event, time_ms) in enumerate(zip(batch.events, batch.times_ms, strict=True)):
            value = on(event)
            found = in_force(time_ms).get(value)
            if found is None and self.missing != "keep":
                if self.missing == "refuse":
                    reason = f"no match: {value!r} is not in {self.lookup.table.name}"
                    refused.append((batch.offsets[at], reason))
                continue
            kept.append(at)
            events.append(combine(event, found))
        return _taken(batch, kept)._replace(events=events), refused


def _taken(batch: Batch, kept: list[int]) -> Batch:
    """The batch of the events at ``kept``."""
    return batch._replace(
        offsets=[batch.offsets[at] for at in kept],
        events=[batch.events[at] for at in kept],
        times_ms=[batch.times_ms[at] for at in kept],
    )


class Pipeline(Delegating):
    """A `Processor`: ``steps`` over each batch, then ``processors`` over what is left
    (several: as `Fanout`). ``Pipeline(Filter(f), Map(g)).to(Aggregate(...))``."""

    def __init__(self, *steps: Step) -> None:
        self.steps = steps
        self.processor: Processor[Any] | None = None

    def to(self, *processors: Processor[Any]) -> Pipeline:
        if not processors:
            raise AppError("Pipeline.to: name the processors the steps feed")
        piped = Pipeline(*self.steps)
        piped.processor = processors[0] if len(processors) == 1 else Fanout(processors)
        return piped

    @property
    def inner(self) -> Processor[Any]:  # type: ignore[override]
        if self.processor is None:
            raise AppError("a Pipeline feeds processors: Pipeline(*steps).to(processor)")
        return self.processor

    @property
    def judges_lateness(self) -> bool:
        return getattr(self.inner, "judges_lateness", False)

    @property
    def closes_idle(self) -> bool:
        return closes_idle(self.inner)

    @property
    def tables(self) -> tuple[Table[Any], ...]:
        return tuple(getattr(self.inner, "tables", ()))

    @property
    def lookups(self) -> tuple[Lookup[Any], ...]:
        """The lookups its `Join` steps read (and those of its processors)."""
        joined = tuple(step.lookup for step in self.steps if isinstance(step, Join))
        return joined + tuple(getattr(self.inner, "lookups", ()))

    def bind(self, stream: Stream) -> None:
        bind = getattr(self.inner, "bind", None)
        if bind is not None:
            bind(stream)

    def process(self, state: Any, batch: Batch) -> Output[Any]:
        refused: list[tuple[int, str]] = []
        for step in self.steps:
            batch, dropped = step.apply(batch)
            refused += dropped
        output = self.inner.process(state, batch)
        if not refused and not output.dead_letters:
            return output
        return Output(output.state, output.rows, once([*refused, *output.dead_letters]))
