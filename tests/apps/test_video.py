"""The video sessionizer, through the real log, worker and store: hand-computed cases,
and a property test against a brute-force oracle over random heartbeat streams."""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import closing

import msgspec
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from segment_fold import SegmentFold

from kappaflow.apps.video.app import Heartbeat, Progress, all_progress, create_app, progress
from kappaflow.apps.video.events import KIND_RANK
from kappaflow.events import MAX_EVENT_MS
from kappaflow.log.partitioner import partition_for
from kappaflow.settings import Settings
from kappaflow.testing import run_events

GAP_S = 10.0


def run(events: list[Heartbeat], settings: Settings, **options) -> dict[tuple[str, str], Progress]:
    store = run_events(create_app(settings), events, settings, **options)
    return {(p.user_id, p.video_id): p for p in all_progress(store)}


def hb(ts_s: float, position: float, kind: str = "heartbeat", user: str = "u", video: str = "v"):
    return Heartbeat(user, video, position, round(ts_s * 1000), kind)


def test_continuous_playback_is_one_segment(settings: Settings) -> None:
    events = [hb(0, 0, "play"), *(hb(t, t) for t in range(5, 60, 5)), hb(62, 62, "stop")]
    got = run(events, settings)[("u", "v")]
    assert got.intervals == [[0, 62]]
    assert got.watched_s == 62
    assert got.resume_position_s == 62


def test_seek_pause_and_jump_split_segments(settings: Settings) -> None:
    events = [
        hb(0, 0, "play"), hb(5, 5), hb(10, 10),
        hb(11, 100, "seek"), hb(16, 105), hb(20, 109, "pause"),
        hb(25, 109, "play"), hb(30, 114),
        hb(35, 300),  # a jump forward beyond the gap: a seek without a seek event
        hb(40, 305),
    ]  # fmt: skip
    got = run(events, settings)[("u", "v")]
    assert got.intervals == [[0, 10], [100, 114], [300, 305]]
    assert got.watched_s == 10 + 14 + 5
    assert got.resume_position_s == 305


def test_gap_ends_the_session_and_rewatching_is_counted_once(settings: Settings) -> None:
    events = [hb(0, 0), hb(5, 5), hb(10, 10), hb(100, 0), hb(105, 5), hb(110, 10), hb(115, 15)]
    store = run_events(create_app(settings), events, settings)
    sessions = store.query("SELECT DISTINCT session_ms FROM video_segments ORDER BY 1")
    got = {(p.user_id, p.video_id): p for p in all_progress(store)}[("u", "v")]
    assert sessions == [(0,)], "the first session closed once the watermark passed its gap"
    assert got.intervals == [[0, 15]]
    assert got.watched_s == 15


def test_out_of_order_within_lateness_is_placed_correctly(settings: Settings) -> None:
    ordered = [hb(t, t) for t in range(0, 50, 5)]
    shuffled = [ordered[i] for i in (0, 2, 1, 4, 3, 6, 5, 9, 7, 8)]
    assert run(shuffled, settings) == run(
        ordered, settings.replace(data_dir=settings.data_dir + "2")
    )
    assert run(shuffled, settings.replace(data_dir=settings.data_dir + "3"))[
        ("u", "v")
    ].intervals == [[0, 45]]


def test_late_and_duplicate_events_are_dead_lettered(settings: Settings) -> None:
    events = [hb(0, 0), hb(5, 5), hb(5, 5), hb(100, 100), hb(40, 40), hb(101, 101)]
    store = run_events(create_app(settings), events, settings.replace(allowed_lateness_s=30))
    reasons = [reason.split(":")[0] for _, _, reason, _ in store.dead_letters("video.heartbeats")]
    assert sorted(reasons) == ["duplicate", "late"]
    late = next(r for r in store.dead_letters("video.heartbeats") if r[2].startswith("late"))
    assert b'"ts":40000' in late[3]


def test_open_session_counts_in_progress(settings: Settings) -> None:
    events = [hb(0, 0, "play"), hb(5, 5), hb(10, 10)]
    store = run_events(create_app(settings), events, settings)
    assert store.query("SELECT count(*) FROM video_segments") == [(0,)], "still open"
    got = all_progress(store)[0]
    assert (got.resume_position_s, got.watched_s, got.intervals) == (10, 10, [[0, 10]])


def test_users_and_videos_are_independent(settings: Settings) -> None:
    events = [hb(0, 0, user="a"), hb(0, 50, user="b"), hb(5, 5, user="a"), hb(5, 55, user="b"),
              hb(6, 0, user="a", video="w"), hb(11, 5, user="a", video="w")]  # fmt: skip
    got = run(events, settings)
    assert {k: p.intervals for k, p in got.items()} == {
        ("a", "v"): [[0, 5]], ("b", "v"): [[50, 55]], ("a", "w"): [[0, 5]],
    }  # fmt: skip


def test_progress_rows_lead_with_their_partition_and_are_found_in_any(settings: Settings) -> None:
    """A progress row is keyed by the partition of its user's heartbeats first, so that a
    worker's commit rewrites the pages of its own partitions only; the query looks in
    every partition, so a row is found even where its user's key does not hash to."""
    users = [f"user-{n}" for n in range(40)]
    events = [*(hb(0, 0, "play", user) for user in users), *(hb(5, 5, user=user) for user in users)]
    store = run_events(create_app(settings), events, settings)
    rows = store.query("SELECT partition, user_id FROM video_progress")
    assert dict((user, partition) for partition, user in rows) == {
        user: partition_for(user, settings.partitions) for user in users
    }
    assert {partition for partition, _ in rows} == set(range(settings.partitions))
    db = sqlite3.connect(settings.sqlite_path)
    with closing(db), db:  # as another partitioner would have put it
        db.execute("UPDATE video_progress SET partition = (partition + 1) % ? WHERE user_id = ?",
                   (settings.partitions, "user-0"))  # fmt: skip
    for user in users:
        found = progress(store, user, "v", settings.partitions)
        assert found is not None and found.resume_position_s == 5.0
    assert progress(store, "user-40", "v", settings.partitions) is None


def test_identifiers_holding_the_key_separator_stay_apart(settings: Settings) -> None:
    """The separator of (user, video) keys is a character JSON strings may carry: keys
    holding it are escaped, so no pair is split wrongly, none is merged with another,
    and the worker does not fail on them."""
    tricky = [("a\x1fb", "v"), ("a", "b\x1fv"), ("a", "v"), ("\x1f", "\x1f\x1f")]
    events = [hb(t, t, user=user, video=video) for user, video in tricky for t in (0, 5)]
    store = run_events(create_app(settings), events, settings, close=True)
    got = {(p.user_id, p.video_id): p.intervals for p in all_progress(store)}
    assert got == {pair: [[0, 5]] for pair in tricky}
    closed = store.query("SELECT DISTINCT user_id, video_id FROM video_segments ORDER BY 1, 2")
    assert closed == sorted(tricky)


# ---- property test -----------------------------------------------------------------

PAUSE_OR_STOP = (KIND_RANK["pause"], KIND_RANK["stop"])


def oracle(events: list[Heartbeat], lateness_ms: int, gap_ms: int) -> dict:
    """Slow and obvious: filter late events (against the latest of their own pair) and
    duplicates in delivery order, then sort each pair's events, split sessions on the
    gap and walk the segment rules. Returns per pair (resume position, watched
    intervals, raw segments), and refusal counts."""
    accepted, seen, highest = [], set(), {}
    refused = {"late": 0, "duplicate": 0}
    for e in events:
        pair = (e.user_id, e.video_id)
        if pair in highest and e.ts < highest[pair] - lateness_ms:
            refused["late"] += 1
            continue
        highest[pair] = max(highest.get(pair, e.ts), e.ts)
        item = (e.user_id, e.video_id, e.ts, KIND_RANK[e.kind], e.position_s)
        if item in seen:
            refused["duplicate"] += 1
        else:
            seen.add(item)
            accepted.append(item)
    result = {}
    for pair in {(u, v) for u, v, *_ in accepted}:
        items = sorted(i[2:] for i in accepted if i[:2] == pair)
        segments, current, previous = [], None, None
        for ts, rank, position in items:
            if previous is not None and ts - previous[0] > gap_ms and current is not None:
                segments.append(current)
                current = None
            if current is None:
                if rank not in PAUSE_OR_STOP:
                    current = [position, position]
            else:
                drift = (position - previous[1]) - (ts - previous[0]) / 1000
                if rank != KIND_RANK["seek"] and abs(drift) <= gap_ms / 1000:
                    current = [min(current[0], position), max(current[1], position)]
                    if rank in PAUSE_OR_STOP:
                        segments.append(current)
                        current = None
                else:
                    segments.append(current)
                    current = None if rank in PAUSE_OR_STOP else [position, position]
            previous = (ts, position)
        if current is not None:
            segments.append(current)
        segments = sorted(s for s in segments if s[1] > s[0])
        covered: list[list[float]] = []
        for start, end in segments:
            if covered and start <= covered[-1][1]:
                covered[-1][1] = max(covered[-1][1], end)
            else:
                covered.append([start, end])
        result[pair] = (items[-1][2], covered, segments)
    return result, refused


def raw_segments(store) -> dict:
    """Every segment, unmerged: those of closed sessions and those still open."""
    found: dict = {}
    for user, video, start, end in store.query(
        "SELECT user_id, video_id, start_s, end_s FROM video_segments"
    ):
        found.setdefault((user, video), []).append([start, end])
    for user, video, open_segments in store.query(
        "SELECT user_id, video_id, open_segments FROM video_progress"
    ):
        found.setdefault((user, video), []).extend(msgspec.json.decode(open_segments))
    return {pair: sorted(segments) for pair, segments in found.items()}


@st.composite
def playback(draw, user: str, video: str) -> list[Heartbeat]:
    """One pair's events: time steps around the 5 s heartbeat and the session gap,
    positions that mostly follow the clock, sometimes jump, all kinds of events."""
    events, ts, position = [], draw(st.integers(0, 20)) * 1000, 0.0
    for _ in range(draw(st.integers(1, 20))):
        step = draw(st.sampled_from([0, 1, 2, 5, 5, 5, 9, 10, 11, 15, 30]))
        ts += step * 1000
        position = max(
            0.0, position + step + draw(st.sampled_from([0, 0, 0, -3, 4, -10, 10, -11, 12, 40]))
        )
        kind = draw(st.sampled_from(["heartbeat"] * 6 + ["play", "pause", "seek", "stop"]))
        events.append(Heartbeat(user, video, position, ts, kind))
    return events


@st.composite
def streams(draw):
    """Several pairs interleaved in event-time order, then shuffled a little, with
    duplicates and stragglers."""
    events = [
        event
        for user, video in draw(
            st.sets(st.sampled_from(["a", "b"]), min_size=1).flatmap(
                lambda users: st.just([(u, v) for u in users for v in ("x", "y")])
            )
        )
        for event in draw(playback(user, video))
    ]
    events.sort(key=lambda e: e.ts)
    for _ in range(draw(st.integers(0, 8))):
        i, j = draw(st.integers(0, len(events) - 1)), draw(st.integers(0, len(events) - 1))
        events[i], events[j] = events[j], events[i]
    for _ in range(draw(st.integers(0, 5))):
        events.insert(draw(st.integers(0, len(events))), draw(st.sampled_from(events)))
    return events


@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=streams(),
    lateness_s=st.sampled_from([0, 3, 10, 30]),
    batch=st.integers(1, 25),
    restarts=st.integers(0, 3),
)
def test_sessionizer_matches_the_oracle(events, lateness_s, batch, restarts) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.load(
            {},
            {
                "data_dir": data_dir, "partitions": 1, "batch_max_events": batch,
                "allowed_lateness_s": lateness_s, "video_session_gap_s": GAP_S,
                "video_progress_accuracy_s": 0,  # every change written, as the oracle has it
            },
        )  # fmt: skip
        store = run_events(create_app(settings), events, settings, restarts=restarts)
        progress = all_progress(store)
        raw = raw_segments(store)
        reasons = [reason.split(":")[0] for *_, reason, _ in store.dead_letters("video.heartbeats")]
    expected, refused = oracle(events, lateness_s * 1000, round(GAP_S * 1000))
    assert {reason: reasons.count(reason) for reason in refused} == refused
    got = {
        (p.user_id, p.video_id): (
            p.resume_position_s,
            p.intervals,
            raw.get((p.user_id, p.video_id), []),
        )
        for p in progress
    }
    assert got == expected


@hypothesis_settings(max_examples=60, deadline=None)
@given(events=playback("u", "v"), cut=st.integers(0, 40))
def test_a_run_folds_as_its_items_one_at_a_time(events, cut) -> None:
    """The session operator hands the fold runs of items: one call for a run gives the
    accumulator of one call per item, and of the run cut in two."""
    fold = SegmentFold(GAP_S, *create_app(Settings.load({}, {})).lookups)
    keyed = fold.items(events, [e.ts for e in events], list(range(len(events))))
    items = sorted(item for _, item in keyed)
    opened = fold.start(items[0])
    one_by_one = fold.copy(opened)
    for item in items[1:]:
        one_by_one = fold.extend(one_by_one, [item])
    cut = min(cut + 1, len(items))
    in_two = fold.extend(fold.extend(fold.copy(opened), items[1:cut]), items[cut:])
    assert fold.extend(fold.copy(opened), items[1:]) == one_by_one == in_two


def test_a_players_clock_ahead_costs_no_other_player_an_event(settings: Settings) -> None:
    """Ten players on one partition, one of whose clocks runs 60 s fast and one of which
    sent a heartbeat dated in the year 9999 (in the log from before ingest refused
    such times): every heartbeat of every other player counts, before and after
    restarts, and the fast player's own count too."""
    settings = settings.replace(partitions=1)
    start = 1_767_225_600_000
    events = [
        hb(start // 1000 + s + (60 if user == "fast" else 0), s, user=user)
        for s in range(0, 450, 5)
        for user in ["fast", *(f"user-{n}" for n in range(9))]
    ]
    events.insert(20, Heartbeat("future", "v", 0.0, MAX_EVENT_MS, "heartbeat"))
    store = run_events(create_app(settings), events, settings, restarts=2, close=True)
    assert store.dead_letters("video.heartbeats") == []
    watched = {p.user_id: p.watched_s for p in all_progress(store)}
    assert watched == {"future": 0.0} | {
        u: 445.0 for u in ["fast", *(f"user-{n}" for n in range(9))]
    }
