"""Effectively-once under crashes, with real processes: while a writer appends a
viewing workload, a ``kappaflow worker`` process is killed with SIGKILL at random
moments and restarted; every result table must equal an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from kappaflow.apps.video.app import create_app
from kappaflow.apps.video.catalog import load as load_catalog
from kappaflow.apps.video.sim import simulate, simulated_catalog
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.testing import DEAD_LETTERS, run_events

from .kills import kill_while_appending, on_stack

pytestmark = pytest.mark.integration

TABLES = {
    "video_segments": "SELECT * FROM video_segments ORDER BY 1, 2, 3, 4",
    "video_progress": "SELECT * FROM video_progress ORDER BY 1, 2, 3",
    "kf_dead_letters": DEAD_LETTERS,
    "video_royalties": "SELECT * FROM video_royalties ORDER BY 1, 2",
    "ad_impressions": "SELECT * FROM ad_impressions ORDER BY 1, 2, 3",
    "ad_viewers": "SELECT * FROM ad_viewers ORDER BY 1, 2, 3, 4",
}


def snapshot(store: Store) -> dict[str, list[tuple]]:
    return {name: store.query(sql) for name, sql in TABLES.items()}


def settings_for(path: Path) -> Settings:
    # A long idle timeout: idle flushing depends on wall-clock pauses, which the kills
    # change on purpose; small batches make many commits to be interrupted. Progress rows
    # are written on every change: at an accuracy, which rows are written depends on the
    # batches, and the kills change those too.
    return Settings.load(
        {},
        {
            "data_dir": str(path),
            "partitions": 4,
            "batch_max_events": 300,
            "idle_timeout_s": 3600,
            "poll_interval_ms": 10,
            "video_progress_accuracy_s": 0,
        },
    )


def test_sigkilled_worker_restarts_to_the_same_results(
    tmp_path: Path, stack_settings: Settings
) -> None:
    """On each stack, against one uninterrupted run on the embedded stack."""
    workload = simulate(60_000, viewers=300, seed=11, jitter_ms=3_000, duplicates=0.01)
    events = workload.events
    catalog = simulated_catalog(11)
    uninterrupted = settings_for(tmp_path / "uninterrupted")
    load_catalog(open_store(uninterrupted), catalog)
    reference = snapshot(run_events(create_app(uninterrupted), events, uninterrupted))
    assert all(reference[name] for name in ("video_segments", "kf_dead_letters", "ad_viewers"))
    assert {row[1] for row in reference["video_royalties"]} > {"unknown"}

    settings = on_stack(settings_for(tmp_path / "killed"), stack_settings)
    catalog_store = open_store(settings)
    load_catalog(catalog_store, catalog)
    catalog_store.close()
    kill_while_appending(settings, create_app(settings), events)
    store = open_store(settings)
    got = snapshot(store)
    store.close()
    for name in reference:
        assert got[name] == reference[name], f"{name} differs from the uninterrupted run"
