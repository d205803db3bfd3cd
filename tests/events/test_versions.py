"""Schema versions: which changes need one, the registry's check at start, ingest of
every version, and the worker reading a log of several versions as the current one (on
each stack)."""

from __future__ import annotations

import time
from contextlib import closing

import msgspec
import pytest
from plays_app import SCHEMAS, Play, PlayOnDevice, PlayV2, PlayV3, PlayWithCountry, from_v1

from kappaflow.app import Stream, load_apps
from kappaflow.errors import AppError
from kappaflow.events import EventTime, Identifier
from kappaflow.events.records import as_array, tagged, untagged
from kappaflow.events.registry import TOPIC, check, register, registered
from kappaflow.events.versions import Earlier, changes, json_schema
from kappaflow.log import open_log
from kappaflow.log.base import Log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.worker import Worker, run_workers
from kappaflow.testing.services import serving

EVENTS = "/v1/streams/plays/events"


class Inner(msgspec.Struct):
    n: int


class InnerRenamed(msgspec.Struct):
    """A docstring."""

    n: int


class InnerRetyped(msgspec.Struct):
    n: str


class Described(msgspec.Struct):
    title: str
    description: Inner


class DescribedRetyped(msgspec.Struct):
    """Say what you like."""

    title: int
    description: InnerRenamed


class DescribedDeeper(msgspec.Struct):
    title: str
    description: InnerRetyped


def test_a_new_optional_field_is_the_only_change_that_keeps_records_readable() -> None:
    v1, country, device, v2 = map(json_schema, (Play, PlayWithCountry, PlayOnDevice, PlayV2))
    assert changes(v1, country) == []
    assert changes(v1, v1) == []
    assert changes(country, v1) == ["field 'country' was removed"]
    assert changes(v1, device) == [
        "field 'device' was added as required (give it a default, or add a version with an "
        "upcaster)"
    ]
    assert changes(v1, v2)[:1] == ["field 'seconds' was removed"]

    class Required(msgspec.Struct):
        user: str
        ts: int
        seconds: float

    class OtherDefault(msgspec.Struct):
        user: str
        ts: int
        seconds: float = 1.0

    class Retyped(msgspec.Struct):
        user: int
        ts: int
        seconds: float = 0.0

    plain = msgspec.defstruct("Plain", [("user", str), ("ts", int), ("seconds", float, 0.0)])
    assert changes(json_schema(plain), json_schema(Required)) == [
        "field 'seconds' was made required"
    ]
    assert changes(json_schema(Required), json_schema(plain)) == []  # a default given
    assert changes(json_schema(plain), json_schema(OtherDefault)) == [
        "field 'seconds' changed its default from 0.0 to 1.0"
    ]
    assert changes(json_schema(plain), json_schema(Retyped)) == [
        'field \'user\' changed type from {"type":"string"} to {"type":"integer"}'
    ]


def test_fields_are_compared_whatever_their_names_and_inside_nested_structs() -> None:
    """Fields named like a schema's wording (title, description) are fields; a nested
    struct's field retyped is a change of the field holding it; docstrings and struct
    names are not changes."""
    assert changes(json_schema(Described), json_schema(DescribedRetyped)) == [
        'field \'title\' changed type from {"type":"string"} to {"type":"integer"}'
    ]
    (change,) = changes(json_schema(Described), json_schema(DescribedDeeper))
    assert change.startswith("field 'description' changed type from {") and '"string"' in change


def test_unknown_fields_refused_or_records_by_position_are_changes_too() -> None:
    class Strict(msgspec.Struct, forbid_unknown_fields=True):
        user: Identifier
        ts: EventTime
        seconds: float = 0.0

    class ByPosition(msgspec.Struct, array_like=True):
        user: Identifier
        ts: EventTime
        seconds: float = 0.0

    assert changes(json_schema(Play), json_schema(Strict)) == [
        "unknown fields, which the log keeps as they came, are now refused (forbid_unknown_fields)"
    ]
    assert changes(json_schema(Strict), json_schema(Play)) == []
    (change,) = changes(json_schema(Play), json_schema(ByPosition))
    assert change.startswith("schema changed from {")


def test_a_version_without_an_upcaster_is_read_as_the_next() -> None:
    """Version 1 is upcast to version 2, which reads as version 3 (a new optional field);
    version 2's records are read as version 3 directly."""
    schema, earlier = SCHEMAS["v3"]
    stream = Stream("plays", schema, key="user", time="ts", earlier=earlier)
    assert [stream.read_as(v) for v in (1, 2, 3)] == [1, 3, 3]
    (from_1,) = stream.upcast(1, [Play("a", 1, 2.0)])
    assert from_1 == PlayV3("a", 1, "unknown", 2.0, None)
    (from_2,) = stream.upcast(2, [PlayV3("b", 2, "tv", 1.0)])
    assert from_2 == PlayV3("b", 2, "tv", 1.0, None)


def test_every_version_has_the_key_and_time_fields_of_one_type() -> None:
    class OtherKey(msgspec.Struct):
        user: int
        ts: int

    class NoTime(msgspec.Struct):
        user: str

    for first in (OtherKey, NoTime):
        with pytest.raises(AppError, match=f"of version 1 \\({first.__name__}\\) is not as in "
                                           "the current version"):  # fmt: skip
            Stream("plays", Play, key="user", time="ts", earlier=[Earlier(first, from_v1)])


def test_records_are_tagged_with_their_version_and_read_back() -> None:
    records = [b'{"user":"a"}', b'{"user":"b"}']
    assert tagged(1, records) == records
    assert tagged(2, records) == [b'2\x1e{"user":"a"}', b'2\x1e{"user":"b"}']
    assert [untagged(r) for r in tagged(12, records)] == [(12, r) for r in records]
    assert untagged(records[0]) == (1, records[0])
    for bad in (b'x\x1e{"user":"a"}', b'1\x1e{"user":"a"}', b'\x1e{"user":"a"}'):
        with pytest.raises(ValueError, match="names no schema version"):
            untagged(bad)
    assert as_array(records, 1) == b'[{"user":"a"},{"user":"b"}]'
    assert as_array(tagged(12, records), 12) == b'[{"user":"a"},{"user":"b"}]'
    for mixed, version in (
        ([*tagged(2, records[:1]), records[1]], 2),
        ([records[0], *tagged(2, records[1:])], 1),
        (tagged(12, records), 2),
        (tagged(2, records), 12),
    ):
        assert as_array(mixed, version) is None


def plays(settings: Settings, schema: str) -> Settings:
    return settings.replace(apps=("plays_app",), plays_schema=schema)


def streams(settings: Settings) -> list:
    return [stream for app in load_apps(settings) for stream in app.streams]


def worker(settings: Settings, log: Log) -> Worker:
    (app,) = load_apps(settings)
    return Worker(
        app, app.streams[0], log, open_store(settings), settings, range(settings.partitions)
    )


def test_a_change_in_place_that_the_log_cannot_take_is_refused_at_start(
    settings: Settings,
) -> None:
    writer = open_log(settings, writer=True)
    try:
        register(writer, streams(plays(settings, "v1")))
        register(writer, streams(plays(settings, "v1")))  # nothing new
        assert registered(writer) == {("plays", 1): json_schema(Play)}
        assert writer.end_offsets(TOPIC) == {0: 1}
        for schema, named in (
            ("v1+required", "version 1 was changed in place, and its field 'device' was "
                            "added as required"),
            ("v2 without upcaster", "version 2 has no upcaster from version 1, and its field "
                                    "'seconds' was removed"),
        ):  # fmt: skip
            with pytest.raises(AppError, match=named):
                check(writer, streams(plays(settings, schema)))
        register(writer, streams(plays(settings, "v1+optional")))
        for schema in ("v1", "v2"):  # each reads version 1 as Play, without country
            with pytest.raises(AppError, match="version 1 was changed in place, and its "
                                               "field 'country' was removed"):  # fmt: skip
                check(writer, streams(plays(settings, schema)))
    finally:
        writer.close()


def test_a_schema_is_registered_once_whatever_its_defaults(settings: Settings) -> None:
    """A tuple default is a JSON array once registered: it must compare equal."""

    class Tagged(msgspec.Struct):
        user: Identifier
        ts: EventTime
        tags: tuple[str, ...] = ()

    writer = open_log(settings, writer=True)
    try:
        for _ in range(2):
            register(writer, [Stream("tagged", Tagged, key="user", time="ts")])
        assert writer.end_offsets(TOPIC) == {0: 1}
    finally:
        writer.close()


def test_a_worker_refuses_to_start_without_a_version_the_log_holds(settings: Settings) -> None:
    writer = open_log(settings, writer=True)
    try:
        register(writer, streams(plays(settings, "v2")))
        assert registered(writer) == {("plays", 1): json_schema(Play),
                                      ("plays", 2): json_schema(PlayV2)}  # fmt: skip
    finally:
        writer.close()
    reader = open_log(settings)
    try:
        with pytest.raises(AppError, match="holds records of version 2, and the app declares "
                                           "versions 1 to 1"):  # fmt: skip
            worker(plays(settings, "v1"), reader).start()
        worker(plays(settings, "v2"), reader).start()
    finally:
        reader.close()


def logged(log: Log, topic: str) -> list[bytes]:
    """Every record of ``topic``, read to its end (Kafka may answer a read with nothing
    while it fetches)."""
    values: list[bytes] = []
    for partition, end in log.end_offsets(topic).items():
        offset, deadline = 0, time.monotonic() + 30
        while offset < end and time.monotonic() < deadline:
            batch = log.read(topic, partition, offset, 1_000)
            values += batch.values
            offset = batch.next_offset
    return values


def test_every_version_is_ingested_and_processed_as_the_current_one(
    stack_settings: Settings,
) -> None:
    settings = stack_settings
    v1, v2 = plays(settings, "v1"), plays(settings, "v2")
    with serving(v1) as client:
        sent = [{"user": "a", "ts": 1_000, "seconds": 3.0, "country": "nl"},
                {"user": "b", "ts": "1970-01-01T00:00:02.5Z"}]  # fmt: skip
        assert client.post(EVENTS, json=sent).status_code == 202
    with serving(v2) as client:
        assert client.post(EVENTS, json={"user": "c", "ts": 3_000}).status_code == 202  # v1's
        new = {"user": "d", "ts": 4_000, "device": "tv", "watched_s": 5.0}
        assert client.post(EVENTS, json=new).status_code == 202
        as_v2 = client.post(EVENTS, json={"user": "e", "ts": 5_000},
                            headers={"kappaflow-schema-version": "2"})  # fmt: skip
        assert as_v2.status_code == 400
        assert as_v2.json()["problems"][0]["field"] == "device"
        for asked in ("3", "0", "x"):
            refused = client.post(EVENTS, json=new, headers={"kappaflow-schema-version": asked})
            assert refused.status_code == 400 and "1 to 2" in refused.json()["error"]
        document = client.get("/openapi.json").json()
        (header,) = document["paths"][EVENTS]["post"]["parameters"]
        assert header["schema"]["maximum"] == 2 and "PlayV2" in document["components"]["schemas"]
    log = open_log(settings)
    as_sent = [*map(msgspec.json.encode, sent), b'{"user":"c","ts":3000}']
    assert sorted(logged(log, "plays")) == sorted([*as_sent, b"2\x1e" + msgspec.json.encode(new)])
    writer = open_log(settings, writer=True)
    unknown, untagged_badly = b'9\x1e{"user":"z","ts":1}', b'v2\x1e{"user":"z","ts":1}'
    writer.append("plays", 0, [unknown, untagged_badly])
    writer.close()
    running = worker(v2, log)
    with closing(running.store), closing(log):
        running.start()
        run_workers([running], lambda: False, until_caught_up=True)
        played = sorted(running.store.query("SELECT player, ts, watched_s, device FROM plays"))
        dead = sorted((reason, payload) for _, _, reason, payload in
                      running.store.dead_letters("plays.plays"))  # fmt: skip
    assert played == [
        ("a", 1_000, 3.0, "unknown"), ("b", 2_500, 0.0, "unknown"),
        ("c", 3_000, 0.0, "unknown"), ("d", 4_000, 5.0, "tv"),
    ]  # fmt: skip
    assert dead == [
        ("undecodable: the record is of version 9 of the schema, and the stream declares "
         "versions 1 to 2", unknown),
        ("undecodable: the record starts with b'v2', which names no schema version",
         untagged_badly),
    ]  # fmt: skip
