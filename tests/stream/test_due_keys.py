"""The index of keys by the time at which each is due."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kappaflow.stream.due import BUCKET_BITS, DueKeys

KEYS = st.sampled_from("abcdefgh")
SCHEDULE = st.tuples(st.just("schedule"), KEYS, st.integers(0, 1_000))
POP = st.tuples(st.just("pop"), st.just(""), st.integers(-10, 1_100))


@given(st.lists(st.one_of(SCHEDULE, POP), max_size=60))
def test_pop_gives_each_key_once_when_the_time_reaches_its_latest_schedule(
    steps: list[tuple[str, str, int]],
) -> None:
    due_keys, expected = DueKeys(), {}
    for action, key, value in steps:
        if action == "schedule":
            due_keys.schedule(key, value)
            expected[key] = value
        else:
            reached = {k for k, due in expected.items() if due <= value}
            popped = due_keys.pop(value)
            assert sorted(popped) == sorted(reached), (value, expected)
            expected = {k: due for k, due in expected.items() if k not in reached}
    assert due_keys.scheduled == expected


def test_a_watermark_inside_a_bucket_keeps_the_keys_it_has_not_reached() -> None:
    due_keys = DueKeys()
    start = 10 << BUCKET_BITS  # the first ms of a bucket
    last = start + (1 << BUCKET_BITS) - 1
    for key, due in {
        "a": start,
        "b": start + 10,
        "c": start + 20,
        "d": last,
        "e": last + 1,
    }.items():
        due_keys.schedule(key, due)
    assert due_keys.pop(start + 15) == ["a", "b"]
    assert due_keys.pop(start + 15) == []
    due_keys.schedule("a", start + 20)
    assert sorted(due_keys.pop(last - 1)) == ["a", "c"]
    assert due_keys.pop(last) == ["d"]
    assert due_keys.pop(last + 1) == ["e"]
    assert due_keys.scheduled == {}
