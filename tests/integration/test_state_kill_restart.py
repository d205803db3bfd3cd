"""Keyed state with a TTL under crashes, with real processes: while a writer appends
hits, a ``kappaflow worker`` process of the visits app (tests/visits_app.py) is killed
with SIGKILL at random moments and restarted; the visits must equal an uninterrupted
run's: keys expired and were deleted meanwhile, and none came back after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from visits_app import create_app, hits
from visits_app import kept as kept_keys

from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.testing import run_events

from .kills import kill_while_appending, on_stack

pytestmark = pytest.mark.integration


def settings_for(path: Path) -> Settings:
    # Small batches make many commits to be interrupted; a long idle timeout keeps the
    # wall clock, which the kills change on purpose, out of the results.
    return Settings.load({}, {"data_dir": str(path), "partitions": 4, "batch_max_events": 300,
                              "idle_timeout_s": 3600, "poll_interval_ms": 10}
                         ).replace(apps=("visits_app",))  # fmt: skip


def visits(store: Store) -> list[tuple[str, int, int]]:
    return store.query("SELECT * FROM visits ORDER BY 1, 2")


def test_sigkilled_worker_restarts_to_the_same_visits_and_keys(
    tmp_path: Path, stack_settings: Settings
) -> None:
    """On each stack, against one uninterrupted run on the embedded stack."""
    events = hits(40_000)
    uninterrupted = settings_for(tmp_path / "uninterrupted")
    reference = visits(run_events(create_app(uninterrupted), events, uninterrupted))
    assert len(reference) > 1_000

    settings = on_stack(settings_for(tmp_path / "killed"), stack_settings)
    app = create_app(settings)
    kill_while_appending(settings, app, events)
    store = open_store(settings)
    assert visits(store) == reference, "the visits differ from the uninterrupted run's"
    group = app.group(app.streams[0])
    kept = {key for claim in store.claim(group, range(4), "test").values() for key in claim.keys}
    store.close()
    must, may = kept_keys(events)  # which near the TTL depends on how batches were cut
    assert must <= kept <= may
