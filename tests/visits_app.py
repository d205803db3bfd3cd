"""An app that keeps a record per key in a `State` with a TTL, for the tests of keyed
state (``KAPPAFLOW_APPS=visits_app``, with tests/ on the path): a key's visit is its
run of hits until it has none for the TTL, which deletes its record; a row per visit
counts its hits. `visits` gives the same rows from scratch."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import msgspec

from kappaflow.app import App, Batch, FunctionProcessor, Rows, State, Stream
from kappaflow.settings import Settings
from kappaflow.store.base import Table

TTL_S = 120
T0 = 1_767_225_600_000


class Hit(msgspec.Struct):
    key: str
    ts: int


class Visit(msgspec.Struct, array_like=True):
    first_ms: int
    hits: int


VISITS = Table(
    "visits",
    columns=(("key", "TEXT"), ("first_ms", "INTEGER"), ("hits", "INTEGER")),
    key=("key", "first_ms"),
)


def count(visits: State[Visit], batch: Batch) -> Rows:
    rows = {}
    for hit, ts in zip(batch.events, batch.times_ms, strict=True):
        visit = visits.get(hit.key) or Visit(ts, 0)
        visit.hits += 1
        visits.set(hit.key, visit)
        rows[hit.key, visit.first_ms] = (hit.key, visit.first_ms, visit.hits)
    return {VISITS.name: list(rows.values())}


def create_app(settings: Settings) -> App:
    hits = Stream("hits", Hit, key="key", time="ts")
    processor = FunctionProcessor(count, Visit, ttl_s=TTL_S)
    return App("visits", [hits], [VISITS], {hits.name: processor})


def hits(slots: int, keys: int = 400, step_ms: int = 25, seed: int = 0) -> list[Hit]:
    """A hit every ``step_ms`` (of ``slots``), of one of the keys active then: each key
    is active for a minute in every 400 s, hit every second or two, and silent in
    between. So whether its record expired between two hits never depends on how the
    hits were batched: with about 60 keys active at a time, every partition has hits
    all along, and a batch of a few hundred spans far less event time than lies
    between the TTL and those gaps."""
    rng = random.Random(seed)
    cycle_ms = 400_000
    phases = [rng.randrange(cycle_ms) for _ in range(keys)]
    events = []
    for n in range(slots):
        ts = T0 + n * step_ms
        active = [k for k in range(keys) if (ts - T0 + phases[k]) % cycle_ms < 60_000]
        if active:
            events.append(Hit(f"k{rng.choice(active)}", ts))
    return events


def visits(events: Sequence[Hit]) -> Iterator[tuple[str, int, int]]:
    """The rows from scratch: a key's hit more than the TTL after its previous one
    starts a visit."""
    last: dict[str, int] = {}
    current: dict[str, list[int]] = {}
    done = []
    for hit in events:
        if hit.key in last and hit.ts - last[hit.key] <= TTL_S * 1000:
            current[hit.key][1] += 1
        else:
            if hit.key in current:
                done.append((hit.key, *current[hit.key]))
            current[hit.key] = [hit.ts, 1]
        last[hit.key] = hit.ts
    yield from done
    yield from ((key, first, n) for key, (first, n) in current.items())


def kept(events: Sequence[Hit]) -> tuple[set[str], set[str]]:
    """The keys whose record must be kept at the end (hit within the TTL), and those
    whose record may be: a record is deleted at a batch, some way past the TTL."""
    since = {hit.key: events[-1].ts - hit.ts for hit in events}  # ms since its last hit
    must = {key for key, ms in since.items() if ms <= TTL_S * 1000}
    return must, {key for key, ms in since.items() if ms < 2 * TTL_S * 1000}
