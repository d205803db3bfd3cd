"""Royalties and ad impressions: hand-computed cases through the real log, worker and
store, and a property test of the incremental reports against a from-scratch
computation over the final segments."""

from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from kappaflow.apps.video.app import Heartbeat, create_app, merge_intervals
from kappaflow.apps.video.catalog import AD_SLOTS, VIDEOS, catalog_rows
from kappaflow.apps.video.reports import DAY_MS, day_of, royalty_report
from kappaflow.apps.video.sim import simulate, simulated_catalog
from kappaflow.events import MAX_EVENT_MS
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing import run_events

MIDNIGHT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def hb(t_s: float, position: float, kind: str = "heartbeat", user: str = "u", video: str = "v"):
    return Heartbeat(user, video, position, MIDNIGHT_MS + round(t_s * 1000), kind)


def play(t0: float, p0: float, seconds: int, user: str = "u", video: str = "v", end="pause"):
    """Playback from p0 at t0 for ``seconds``: play, a heartbeat every 5 s, then ``end``."""
    events = [hb(t0, p0, "play", user, video)]
    events += [hb(t0 + s, p0 + s, "heartbeat", user, video) for s in range(5, seconds, 5)]
    return [*events, hb(t0 + seconds, p0 + seconds, end, user, video)]


def catalog(rate: float = 0.5, slots: tuple = ()) -> dict:
    return {
        VIDEOS.name: [("v", "A title", 600.0, "holder", rate)],
        AD_SLOTS.name: [("v", position, f"adv-{position}", "camp") for position in slots],
    }


def royalties(store) -> list:
    """(day, holder, watched_s, amount) as the report shows them."""
    return [
        msgspec.structs.astuple(row)
        for row in royalty_report(store, {"from": date(2000, 1, 1), "to": date(2100, 1, 1)})
    ]


def impressions(store) -> list:
    return store.query("SELECT * FROM ad_impressions ORDER BY day, advertiser, campaign")


@given(st.one_of(st.integers(0, MAX_EVENT_MS),
                 st.integers(1, MAX_EVENT_MS // DAY_MS).map(lambda day: day * DAY_MS - 1),
                 st.integers(0, MAX_EVENT_MS // DAY_MS).map(lambda day: day * DAY_MS)))  # fmt: skip
def test_the_day_of_an_event_time_is_its_utc_date(ms: int) -> None:
    assert day_of(ms) == datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def test_a_segment_across_midnight_is_split_between_the_days(settings: Settings) -> None:
    events = play(-60, 0, 120, end="stop")
    store = run_events(create_app(settings), events, settings, reference=catalog(0.5), close=True)
    assert royalties(store) == [
        ("2025-12-31", "holder", 60.0, 0.5),
        ("2026-01-01", "holder", 60.0, 0.5),
    ]


def test_a_slot_at_a_segment_boundary_counts_and_one_past_it_does_not(
    settings: Settings,
) -> None:
    reference = catalog(slots=(0.0, 30.0, 30.5))
    store = run_events(create_app(settings), play(0, 0, 30), settings, reference=reference,
                       close=True)  # fmt: skip
    assert impressions(store) == [
        ("2026-01-01", "adv-0.0", "camp", 1, 1),
        ("2026-01-01", "adv-30.0", "camp", 1, 1),
    ]


def test_rewatching_counts_once_per_session_and_again_in_a_new_one(settings: Settings) -> None:
    first = [*play(0, 0, 30, end="heartbeat"), hb(31, 0, "seek"), *play(32, 0, 30)[1:]]
    second = play(200, 0, 30)  # after more than the session gap: a new viewing session
    other_user = play(0, 0, 30, user="w")
    store = run_events(create_app(settings), [*first, *second, *other_user], settings,
                       reference=catalog(1.0, slots=(10.0,)), close=True)  # fmt: skip
    assert royalties(store) == [("2026-01-01", "holder", 90.0, 1.5)]
    assert impressions(store) == [("2026-01-01", "adv-10.0", "camp", 3, 2)]


def test_videos_missing_from_the_catalog_count_under_unknown(settings: Settings) -> None:
    events = [*play(0, 0, 30), *play(0, 0, 20, video="not-in-catalog")]
    store = run_events(create_app(settings), events, settings, reference=catalog(0.5), close=True)
    assert royalties(store) == [
        ("2026-01-01", "holder", 30.0, 0.25),
        ("2026-01-01", "unknown", 20.0, 0.0),
    ]


def test_a_rate_change_applies_from_its_valid_from_time_live_and_in_a_replay(
    settings: Settings, tmp_path: Path
) -> None:
    """The catalog keeps each upload with the time it is valid from: a session reads the
    rates in force when it started, so the log replayed into a new store (with the same
    catalog uploads) gives the royalties computed live, not today's rate for all."""
    app, change_ms = create_app(settings), MIDNIGHT_MS + 200_000
    early, late = play(0, 0, 60), play(300, 0, 60)
    with closing(open_store(settings)) as store:
        store.create_tables(app.all_tables)
        store.upsert(catalog(1.0), valid_from_ms=0)
    with closing(run_events(app, early, settings, close=True)) as store:
        store.upsert(catalog(3.0), valid_from_ms=change_ms)  # uploaded after the first session
    with closing(run_events(app, late, settings, close=True)) as store:
        live = royalties(store)
    assert live == [("2026-01-01", "holder", 120.0, 1.0 + 3.0)]
    replay = settings.replace(data_dir=str(tmp_path / "replay"))
    with closing(open_store(replay)) as store:
        store.create_tables(app.all_tables)
        store.upsert(catalog(1.0), valid_from_ms=0)
        store.upsert(catalog(3.0), valid_from_ms=change_ms)
    with closing(run_events(app, [*early, *late], replay, close=True)) as store:
        assert royalties(store) == live


# ---- property test -------------------------------------------------------------------


def from_scratch(store, reference: dict) -> tuple[dict, dict]:
    """Per holder: (seconds, amount); per (day, advertiser, campaign): (impressions,
    viewers), from the closed segments, computed directly."""
    licences = {v: (holder, rate) for v, _, _, holder, rate in reference[VIDEOS.name]}
    slots = defaultdict(list)
    for video, position, advertiser, campaign in reference[AD_SLOTS.name]:
        slots[video].append((position, advertiser, campaign))
    sessions = defaultdict(list)
    for user, video, session, _, start, end, t0, t1 in store.query(
        "SELECT * FROM video_segments ORDER BY start_ms"
    ):
        sessions[user, video, session].append((start, end, t0, t1))
    money: dict = defaultdict(lambda: [0.0, 0.0])
    shown: Counter = Counter()
    viewers = defaultdict(set)
    for (user, video, _), segments in sessions.items():
        holder, rate = licences.get(video, ("unknown", 0.0))
        seconds = sum(e - s for s, e in merge_intervals([(s, e) for s, e, *_ in segments]))
        money[holder][0] += seconds
        money[holder][1] += seconds / 60 * rate
        for position, advertiser, campaign in slots[video]:
            covering = [seg for seg in segments if seg[0] <= position <= seg[1]]
            if covering:
                s, e, t0, t1 = covering[0]
                at = t0 if e == s else t0 + (position - s) / (e - s) * (t1 - t0)
                day = datetime.fromtimestamp(at / 1000, UTC).date().isoformat()
                shown[day, advertiser, campaign] += 1
                viewers[day, advertiser, campaign].add(user)
    return money, {key: (n, len(viewers[key])) for key, n in shown.items()}


@hypothesis_settings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    seed=st.integers(0, 10_000),
    viewers=st.integers(2, 12),
    jitter_ms=st.sampled_from([0, 2_000, 8_000]),
    restarts=st.integers(0, 3),
)
def test_incremental_reports_equal_a_computation_from_scratch(
    settings: Settings, seed: int, viewers: int, jitter_ms: int, restarts: int
) -> None:
    data_dir = f"{settings.data_dir}-{seed}-{viewers}-{jitter_ms}-{restarts}"
    settings = settings.replace(data_dir=data_dir)
    workload = simulate(1_500, viewers=viewers, seed=seed, jitter_ms=jitter_ms, duplicates=0.02,
                        start_ms=MIDNIGHT_MS - 3_600_000)  # fmt: skip
    rows = catalog_rows(simulated_catalog(seed))
    store = run_events(create_app(settings), workload.events, settings, restarts=restarts,
                       seed=seed, reference=rows, close=True)  # fmt: skip
    money, shown = from_scratch(store, rows)
    got_money: dict = defaultdict(lambda: [0.0, 0.0])
    for _, holder, seconds, amount in royalties(store):
        got_money[holder][0] += seconds
        got_money[holder][1] += amount
    assert set(got_money) == set(money)
    for holder, (seconds, amount) in money.items():
        sessions = len(
            store.query("SELECT DISTINCT user_id, video_id, session_ms FROM video_segments")
        )
        # per session and day: seconds kept to the ms, amounts to a millionth
        assert abs(got_money[holder][0] - seconds) <= 0.0005 * sessions * 2 + 1e-9
        assert abs(got_money[holder][1] - amount) <= 0.0000005 * sessions * 2 + 1e-9
    assert {(d, a, c): (n, v) for d, a, c, n, v in impressions(store)} == shown
