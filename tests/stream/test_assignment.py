"""Partition assignments: what a process's workers own, as the assignment changes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kappaflow.apps.clicks.app import create_app as create_clicks
from kappaflow.apps.video.app import create_app
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.assignment import KafkaGroup, NotKafka, Shares
from kappaflow.stream.shares import ShareFile
from kappaflow.stream.worker import Worker


def test_a_share_is_acknowledged_once_every_worker_of_the_process_owns_it(
    settings: Settings,
) -> None:
    """Two streams' workers of one process follow its share file: ``up`` hears that
    partitions are free only once neither owns them, and a request that comes while
    one of them has not taken the last waits until it has."""
    share = ShareFile(Path(settings.data_dir) / "share")
    shares = Shares(share, [0, 1])
    store = open_store(settings)
    video, clicks = (
        Worker(app, app.streams[0], open_log(settings), store, settings, shares)
        for app in (create_app(settings), create_clicks(settings))
    )
    video.start()
    clicks.start()
    share.offer([1])
    video.poll()
    assert (video.partitions, clicks.partitions) == ([1], [0, 1])
    assert share.owned() is None, "clicks still owns partition 0"
    share.offer([2])
    clicks.poll()
    assert clicks.partitions == [1], "the request before: video has not taken the new one"
    assert share.owned() == [1]
    video.poll()
    assert video.partitions == [2]
    assert share.owned() == [1], "clicks still owns partition 1"
    clicks.poll()
    assert (video.partitions, clicks.partitions, share.owned()) == ([2], [2], [2])


def test_a_consumer_group_assigns_partitions_on_kafka_only(settings: Settings) -> None:
    with pytest.raises(NotKafka, match="KAPPAFLOW_LOG=kafka"):
        KafkaGroup(open_log(settings))
