"""The operator benchmark's input: the click sample hour after hour, in a worker's polls."""

from __future__ import annotations

import gzip
import sys
from itertools import accumulate
from pathlib import Path

import msgspec

from kappaflow.apps.clicks.app import Click
from kappaflow.apps.clicks.demo import sample_path
from kappaflow.log.partitioner import partition_for
from kappaflow.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_ops import batches, write_clicks


def test_the_polls_hold_each_hour_of_clicks_once_on_its_links_partition(tmp_path: Path) -> None:
    settings = Settings.load({}, {"batch_max_events": 1_000})
    path = tmp_path / "clicks.ndjson"
    assert write_clicks(path, 3) == 3 * 3_560
    decode = msgspec.json.Decoder(Click).decode
    sample = [decode(line) for line in gzip.decompress(sample_path().read_bytes()).splitlines()]
    written = [decode(line) for line in path.read_bytes().splitlines()]
    assert [(c.u, c.g, c.c, c.t) for c in written] == [
        (c.u, c.g, c.c, c.t + 3600 * hour) for hour in range(3) for c in sample
    ]

    polls = batches(path, settings)
    by_partition: dict[int, list[Click]] = {}
    for click in written:
        by_partition.setdefault(partition_for(click.g, settings.partitions), []).append(click)
    for partition, clicks in by_partition.items():
        mine = [batch for poll in polls for batch in poll if batch.partition == partition]
        assert all(len(batch.events) <= 1_000 for batch in mine)
        assert [event for batch in mine for event in batch.events] == clicks
        assert [offset for batch in mine for offset in batch.offsets] == list(range(len(clicks)))
        times = [time_ms for batch in mine for time_ms in batch.times_ms]
        assert times == [click.t * 1000 for click in clicks]
        ends = list(accumulate(len(batch.events) for batch in mine))
        highest = list(accumulate(times, max))
        assert [b.watermark_ms for b in mine] == [highest[end - 1] - 30_000 for end in ends]
