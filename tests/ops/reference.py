"""What the operators' rows should be, computed in plain Python from the events alone,
for the tests of kappaflow.ops to compare the rows of the real log, worker and store
with. The events: real click records (the clicks app's packaged sample) and random
sensor readings."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple

import msgspec

from kappaflow.app import Stream
from kappaflow.log.partitioner import partition_for
from kappaflow.ops import Hopping, Tumbling, count, distinct, fold, largest, mean, smallest, total
from kappaflow.settings import Settings
from kappaflow.store import Store
from kappaflow.store.base import Table

T0 = 1_704_067_200_000
"""2024-01-01T00:00Z: the readings' times are in the past, so the wall clock bounds no
partition's watermark."""


class Click(msgspec.Struct):
    """The fields of a real click record that the tests aggregate."""

    g: str
    """The link's hash: the stream's key."""
    t: int
    c: str
    tz: str
    u: str
    nk: int
    hc: int


CLICKS = Stream("clicks", Click, key="g", time="t", time_unit="s")


def real_clicks() -> list[Click]:
    """The 3,440 clicks of the sample (its keep-alive lines left out), a missing country
    or time zone as ``unknown``."""
    sample = resources.files("kappaflow.apps.clicks") / "data" / "usagov_bitly_2012-03-16.jsonl.gz"
    records = [json.loads(line) for line in gzip.decompress(sample.read_bytes()).splitlines()]
    return [Click(r["g"], r["t"], r["c"] or "unknown", r["tz"] or "unknown", r["u"], r["nk"],
                  r["hc"]) for r in records if "t" in r]  # fmt: skip


class Reading(msgspec.Struct):
    sensor: str
    ts: int
    site: str
    value: int


READINGS = Stream("readings", Reading, key="sensor", time="ts")


def readings(n: int, seed: int, step_ms: int = 700, disorder_ms: int = 20_000) -> list[Reading]:
    """``n`` readings of 12 sensors at 4 sites, at distinct times about ``step_ms``
    apart, each appended up to ``disorder_ms`` late (less than the allowed lateness:
    none is late)."""
    rng = random.Random(seed)
    found = [Reading(f"s{rng.randrange(12)}", T0 + at, f"site{rng.randrange(4)}",
                     rng.randrange(-50, 1000))
             for at in rng.sample(range(n * step_ms), n)]  # fmt: skip
    return sorted(found, key=lambda reading: reading.ts + rng.randrange(disorder_ms))


class Arrival(NamedTuple):
    event: Any
    time_ms: int
    partition: int
    offset: int


class Arrivals(NamedTuple):
    """What the worker hands a processor that does not judge lateness itself."""

    events: list[Arrival]
    """The events on time, in log order within each partition."""
    late: list[Arrival]
    watermarks: dict[int, int]
    """Each partition's watermark after its last event."""


def arrivals(stream: Stream, events: Sequence[Any], settings: Settings) -> Arrivals:
    """The events each on its partition, where it is late when below the highest event
    time before it on the partition less the allowed lateness."""
    lateness_ms = round(settings.allowed_lateness_s * 1000)
    highest: dict[int, int] = {}
    offsets: Counter[int] = Counter()
    kept, late = [], []
    for event in events:
        partition = partition_for(getattr(event, stream.key), settings.partitions)
        arrival = Arrival(event, stream.time_of(event), partition, offsets[partition])
        offsets[partition] += 1
        top = highest.get(partition)
        if top is not None and arrival.time_ms < top - lateness_ms:
            late.append(arrival)
            continue
        highest[partition] = arrival.time_ms if top is None else max(top, arrival.time_ms)
        kept.append(arrival)
    return Arrivals(kept, late, {p: top - lateness_ms for p, top in highest.items()})


def starts(window: Tumbling | Hopping, time_ms: int) -> list[int]:
    """The start of each window holding ``time_ms``: multiples of the hop whose window
    of the size covers it."""
    every = window.every_ms if isinstance(window, Hopping) else window.size_ms
    first = time_ms - time_ms % every - window.size_ms
    return [s for s in range(first, time_ms + 1, every) if s <= time_ms < s + window.size_ms]


Group = tuple[Any, ...]
Measures = Mapping[str, Callable[[list[Any]], Any]]
"""Column name -> its value over a window's events (in log order)."""


def windowed(
    arrived: Iterable[Arrival], by: Sequence[str], window: Tumbling | Hopping
) -> dict[tuple[Group, int], list[Arrival]]:
    """The events of each group and window start."""
    found: dict[tuple[Group, int], list[Arrival]] = {}
    for arrival in arrived:
        group = tuple(getattr(arrival.event, name) for name in by)
        for start in starts(window, arrival.time_ms):
            found.setdefault((group, start), []).append(arrival)
    return found


def window_rows(
    into: type[msgspec.Struct],
    by: Sequence[str],
    windows: Mapping[tuple[Group, int], list[Arrival]],
    size_ms: int,
    measures: Measures,
) -> list[msgspec.Struct]:
    """A row of ``into`` per group and window: the group's fields, ``start_ms``,
    ``end_ms`` if ``into`` has it, and the measures."""
    rows = []
    for (group, start), found in windows.items():
        values = dict(zip(by, group, strict=True))
        values |= {"start_ms": start, "end_ms": start + size_ms}
        values |= {name: measure([a.event for a in found]) for name, measure in measures.items()}
        rows.append(into(**{name: values[name] for name in into.__struct_fields__}))
    return rows


def keyed(table: Table, rows: Iterable[msgspec.Struct]) -> dict[Group, msgspec.Struct]:
    """Rows by their key in ``table``, to compare (the order a store reads them in is
    not the point)."""
    return {tuple(getattr(row, name) for name in table.key): row for row in rows}


def stored(store: Store, table: Table) -> dict[Group, msgspec.Struct]:
    return keyed(table, store.select(table))


def initials(trail: str, country: str) -> str:
    return trail + country[0]


class LinkStats(msgspec.Struct):
    """A row of `CLICK_MEASURES` per link (``g``) and window."""

    g: str
    start_ms: int
    end_ms: int
    clicks: int
    nk_total: int
    first_hc: int
    last_hc: int
    mean_hc: float
    countries: int
    trail: str


CLICK_MEASURES = {"clicks": count(), "nk_total": total("nk"), "first_hc": smallest("hc"),
                  "last_hc": largest("hc"), "mean_hc": mean("hc"), "countries": distinct("c"),
                  "trail": fold(initials, "", "c")}  # fmt: skip
"""Every measure, over the clicks' fields."""
CLICK_REFERENCE: dict[str, Callable[[list[Any]], Any]] = {
    "clicks": len,
    "nk_total": lambda clicks: sum(c.nk for c in clicks),
    "first_hc": lambda clicks: min(c.hc for c in clicks),
    "last_hc": lambda clicks: max(c.hc for c in clicks),
    "mean_hc": lambda clicks: sum(c.hc for c in clicks) / len(clicks),
    "countries": lambda clicks: len({c.c for c in clicks}),
    "trail": lambda clicks: "".join(c.c[0] for c in clicks),
}
"""Each of `CLICK_MEASURES` in plain Python, over a group's clicks in order."""
