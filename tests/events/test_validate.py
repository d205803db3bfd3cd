"""Decoding request bodies: every shape accepted, every bad record named."""

from __future__ import annotations

import msgspec
import pytest

from kappaflow.apps.video.app import Heartbeat
from kappaflow.errors import InvalidEvents
from kappaflow.events.validate import MAX_PROBLEMS, EventDecoder, Problem

decoder = EventDecoder(Heartbeat)
GOOD = b'{"user_id": "u", "video_id": "v", "position_s": 1.5, "ts": 1000}'


def problems(body: bytes, ndjson: bool = False) -> list[Problem]:
    with pytest.raises(InvalidEvents) as raised:
        decoder.decode_ndjson(body) if ndjson else decoder.decode_json(body)
    return raised.value.problems


def test_object_array_and_ndjson_decode_to_events_and_the_records_as_they_came() -> None:
    (one,), (record,) = decoder.decode_json(b"\n " + GOOD + b" ")
    assert (one, record) == (Heartbeat("u", "v", 1.5, 1000), GOOD)
    pretty = GOOD.replace(b", ", b",\n  ")
    both = b"[" + GOOD + b",\n " + pretty + b"]"
    assert decoder.decode_json(both) == ([one, one], [GOOD, pretty])
    assert decoder.decode_ndjson(GOOD + b"\n\r\n" + GOOD + b"\n") == ([one, one], [GOOD, GOOD])
    assert decoder.decode_json(b"[]") == ([], [])
    bad_then_good = b"[" + GOOD.replace(b"1.5", b"-1") + b", " + GOOD + b"]"
    with pytest.raises(InvalidEvents):  # decoded one by one, to name the bad one
        decoder.decode_json(bad_then_good)


def test_rfc3339_time_with_zone_is_accepted_and_without_zone_refused() -> None:
    body = b'{"user_id": "u", "video_id": "v", "position_s": 1, "ts": "2026-01-01T00:00:05Z"}'
    assert decoder.decode_json(body).events[0].ts.second == 5
    (problem,) = problems(body.replace(b"Z", b""))
    assert problem.field == "ts"


def test_each_bad_record_is_named_by_index_field_and_reason() -> None:
    body = b"\n".join(
        [
            GOOD,
            b'{"user_id": "u", "video_id": "v", "position_s": "ten", "ts": 1}',
            b'{"user_id": "u", "position_s": 1, "ts": 1}',
            b'{"user_id": "u", "video_id": "v", "position_s": -1, "ts": 1}',
            b'{"user_id": "u", "video_id": "v", "position_s": 1, "ts": 253402300800000}',
            b'{"user_id": "u", "video_id": "v", "position_s": 1, "ts": 1, "kind": "rewind"}',
            b'{"user_id": "", "video_id": "v", "position_s": 1, "ts": 1}',
            b'{"user_id": "u", "video_',
            b"[1, 2]",
        ]
    )
    found = problems(body, ndjson=True)
    assert [(p.index, p.field) for p in found] == [
        (1, "position_s"), (2, "video_id"), (3, "position_s"), (4, "ts"), (5, "kind"),
        (6, "user_id"), (7, None), (8, None),
    ]  # fmt: skip
    assert "Expected `float`, got `str`" in found[0].reason
    assert "missing required field" in found[1].reason
    assert ">= 0" in found[2].reason
    assert "<= 253402300799999" in found[3].reason, "event times end with the year 9999"
    assert found[6].reason.startswith("not valid JSON")


def test_fields_outside_the_schema_are_kept_in_the_record_unless_it_forbids_them() -> None:
    extra = GOOD.replace(b"}", b', "positon_s": 3}')
    assert decoder.decode_json(extra) == ([Heartbeat("u", "v", 1.5, 1000)], [extra])

    class Strict(msgspec.Struct, forbid_unknown_fields=True):
        user_id: str

    with pytest.raises(InvalidEvents) as raised:
        EventDecoder(Strict).decode_ndjson(b'{"user_id": "u"}\n{"user_id": "u", "x": 1}')
    (problem,) = raised.value.problems
    assert (problem.index, problem.field) == (1, "x")
    assert "unknown field `x`" in problem.reason


def test_array_records_are_named_by_position_in_the_array() -> None:
    found = problems(b"[" + GOOD + b', {"user_id": 3}]')
    assert [(p.index, p.field) for p in found] == [(1, "user_id")]


def test_malformed_body_is_one_problem_about_the_body() -> None:
    (problem,) = problems(b'[{"user_id": "u"')
    assert problem.index is None and problem.reason.startswith("body is not valid JSON")
    (problem,) = problems(b"42")
    assert problem.index == 0 and "object" in problem.reason


def test_problems_are_capped_but_counted() -> None:
    with pytest.raises(InvalidEvents) as raised:
        decoder.decode_ndjson(b"\n".join([b"{}"] * 100))
    assert len(raised.value.problems) == MAX_PROBLEMS
    assert raised.value.invalid == 100


DEEP = b"[" * 1_000 + b"]" * 1_000


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        b'{"user_id": ' + DEEP + b"}",
        b'{"unknown": ' + DEEP + b"}",
        b"[" + GOOD + b"," + DEEP + b"]",
    ],
    ids=["array", "field", "unknown field", "record"],
)
def test_json_nested_too_deeply_is_a_problem_of_the_body(body: bytes) -> None:
    (problem,) = problems(body)
    assert problem.index is None and "nested too deeply" in problem.reason


def test_an_ndjson_line_nested_too_deeply_is_named_by_its_line() -> None:
    (problem,) = problems(GOOD + b'\n{"unknown": ' + DEEP + b"}\n" + GOOD, ndjson=True)
    assert problem.index == 1 and "nested too deeply" in problem.reason


def test_ndjson_lines_are_decoded_each_on_its_own() -> None:
    """Two lines that are each not JSON, which joined with a comma would be two events."""
    body = (
        b'{"user_id": "nd-a", "video_id": "v", "position_s": 1, "ts": 1800000000000},'
        b'{"user_id": "nd-b\n'
        b'x", "video_id": "v", "position_s": 1, "ts": 1800000000000}'
    )
    found = problems(body, ndjson=True)
    assert [p.index for p in found] == [0, 1]
    assert all(p.reason.startswith("not valid JSON") for p in found)


def test_ndjson_problems_name_the_line_blank_lines_included() -> None:
    (problem,) = problems(GOOD + b"\n\n \n" + b'{"user_id": 3}' + b"\n", ndjson=True)
    assert (problem.index, problem.field) == (3, "user_id")


@pytest.mark.parametrize(
    ("value", "character"),
    [(rb"a\u0000b", "\x00"), (rb"a\nb", "\n"), (rb"\u001f", "\x1f"), (b"a\x7fb", "\x7f"),
     (b"a/b", "/"), (rb"a\/b", "/")],
)  # fmt: skip
def test_identifiers_refuse_control_characters_and_slashes(value: bytes, character: str) -> None:
    bad = GOOD.replace(b'"video_id": "v"', b'"video_id": "' + value + b'"')
    for found in (problems(b"[" + GOOD + b"," + bad + b"]"), problems(GOOD + b"\n" + bad, True)):
        (problem,) = found
        assert (problem.index, problem.field) == (1, "video_id")
        assert f"holds {character!r}: an identifier may not hold control characters" in (
            problem.reason
        )


def test_identifiers_may_hold_any_other_character() -> None:
    body = GOOD.replace(b'"u"', '"ü 東京 \\\\ x"'.encode()).replace(b"}", b', "event_id": "a-b"}')
    (event,), _ = decoder.decode_json(body)
    assert (event.user_id, event.event_id) == ("ü 東京 \\ x", "a-b")


def test_event_ids_refuse_control_characters_as_identifiers_do() -> None:
    """The store keeps the ids it counted: a NUL in one would fail its commit."""
    (problem,) = problems(GOOD.replace(b"}", b', "event_id": "a\\u0000b"}'))
    assert problem.field == "event_id" and "control characters" in problem.reason
