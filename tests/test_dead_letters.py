"""Dead letters listed with filters and replayed into the log, on each store, and the
``kappaflow dead-letters`` commands."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kappaflow.app import App, load_apps
from kappaflow.apps.clicks.app import Click, create_app
from kappaflow.cli import main
from kappaflow.dead_letters import listing, params, plan_replay, replay
from kappaflow.errors import InvalidQuery, LogUnavailable, StoreUnavailable
from kappaflow.log import Log, open_log, partition_for
from kappaflow.query.params import read_params
from kappaflow.settings import Settings
from kappaflow.store import Store, open_store
from kappaflow.store.base import DeadLetter
from kappaflow.stream.worker import Worker
from kappaflow.testing import run_events

HEARTBEATS, CLICKS = "video.heartbeats", "clicks.clicks"
T = 1_796_500_000
"""A click's time (unix seconds), before the wall clock: windows count no further."""


@pytest.fixture
def log(settings: Settings) -> Iterator[Log]:
    """The embedded log, opened as its writer."""
    with closing(open_log(settings, writer=True)) as writer:
        yield writer


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[Store]:
    """The test's store, on each backend."""
    with closing(open_store(backend_settings)) as opened:
        yield opened


def given(apps: list[App], **strings: str) -> dict[str, Any]:
    """Parameters as given to GET /v1/dead-letters, converted as the query service does."""
    return read_params(params(apps), strings)


def listed(apps: list[App], store: Store, **strings: str) -> list[tuple[str, int, int]]:
    return [(found.group, found.partition, found.offset)
            for found in listing(apps, store, given(apps, **strings))]  # fmt: skip


def test_dead_letters_are_listed_newest_first_by_stream_reason_time_and_offsets(
    backend_settings: Settings, store: Store
) -> None:
    apps = load_apps(backend_settings)
    store.commit(HEARTBEATS, [], {}, [
        DeadLetter(0, 4, "late: event time 1 is below the watermark 9", b'{"user_id":"\xc3\xa9"}'),
        DeadLetter(1, 2, "undecodable: expected an object", b"\xff\xfe\x00"),
    ])  # fmt: skip
    store.commit(CLICKS, [], {}, [DeadLetter(3, 7, "late: event time 5", b'{"t":5}')])
    store.commit(HEARTBEATS, [], {}, [DeadLetter(0, 9, "duplicate", b"{}")])
    everything = listing(apps, store, {})
    assert [(f.group, f.partition, f.offset) for f in everything] == [
        (HEARTBEATS, 0, 9), (CLICKS, 3, 7), (HEARTBEATS, 1, 2), (HEARTBEATS, 0, 4)
    ]  # fmt: skip
    newest, *_, undecodable, late = everything
    assert (newest.app, newest.stream, newest.reason) == ("video", "heartbeats", "duplicate")
    assert (late.record, late.encoding) == ('{"user_id":"é"}', "utf-8")
    encoded = base64.b64encode(b"\xff\xfe\x00").decode()
    assert (undecodable.record, undecodable.encoding) == (encoded, "base64")
    assert late.dead_lettered_at < undecodable.dead_lettered_at + 1 < time.time() + 1
    assert listed(apps, store, stream="heartbeats", reason="late") == [(HEARTBEATS, 0, 4)]
    assert listed(apps, store, reason="late") == [(CLICKS, 3, 7), (HEARTBEATS, 0, 4)]
    assert listed(apps, store, stream="clicks", reason="duplicate") == []
    since = str(everything[1].dead_lettered_at)
    assert listed(apps, store, since=since) == [(HEARTBEATS, 0, 9), (CLICKS, 3, 7)]
    assert listed(apps, store, partition="0", offsets="0-5,8") == [(HEARTBEATS, 0, 4)]
    assert listed(apps, store, limit="1") == [(HEARTBEATS, 0, 9)]
    assert listed(apps, store, since="2999-01-01T00:00:00Z") == []


@pytest.mark.parametrize(
    ("strings", "message"),
    [
        ({"stream": "beats"}, "stream must be one of clicks, heartbeats, got 'beats'"),
        ({"since": "yesterday"}, "since must be unix seconds or an RFC 3339 time"),
        ({"since": "2026-01-01T00:00:00"}, "since must be unix seconds or an RFC 3339 time"),
        ({"limit": "0"}, "limit must be an integer from 1 to 10000, got '0'"),
        ({"limit": "10001"}, "limit must be an integer from 1 to 10000"),
        ({"partition": "-1"}, "partition must be an integer from 0 to"),
        ({"offsets": "4"}, "offsets need a partition"),
        ({"partition": "0", "offsets": "9-4"}, "offsets must be numbers and ranges like 0,2,5-7"),
    ],
)
def test_wrong_filters_are_named(settings: Settings, strings: dict, message: str) -> None:
    apps = load_apps(settings)
    with closing(open_store(settings)) as store, pytest.raises(InvalidQuery, match=message):
        listing(apps, store, given(apps, **strings))


def click(t: int, country: str) -> Click:
    return Click(t=t, g="link", c=country)


@pytest.fixture
def dead_clicks(backend_settings: Settings) -> Iterator[Store]:
    """The clicks of one link processed by a worker: one more than the allowed 30 s
    late (country XL), after a record that is not a click at all."""
    partition = partition_for("link", backend_settings.partitions)
    writer = open_log(backend_settings, writer=True)
    writer.create_topic("clicks", backend_settings.partitions)
    writer.append("clicks", partition, [b'{"t": "soon"}'])
    writer.close()
    (app,) = [app for app in load_apps(backend_settings) if app.name == "clicks"]
    events = [click(T, "US"), click(T + 60, "FR"), click(T - 1_000, "XL")]
    with closing(run_events(app, events, backend_settings)) as store:
        yield store


def countries(store: Store) -> dict[str, int]:
    return dict(store.query("SELECT value, events FROM click_counts_1h "
                            "WHERE dimension = 'country'"))  # fmt: skip


def test_a_replay_appends_to_the_log_and_the_workers_count_it_after_the_fix(
    backend_settings: Settings, dead_clicks: Store
) -> None:
    apps, store = load_apps(backend_settings), dead_clicks
    partition = partition_for("link", backend_settings.partitions)
    assert [(f.reason.split(":")[0], f.offset) for f in listing(apps, store, {})] == [
        ("late", 3), ("undecodable", 0)
    ]  # fmt: skip
    assert countries(store) == {"US": 1, "FR": 1}
    log = open_log(backend_settings, writer=True)
    late = plan_replay(apps, {"stream": "clicks", "reason": "late"})
    assert replay(log, store, late) == {partition: 1}
    assert [f.reason.split(":")[0] for f in listing(apps, store, {})] == ["undecodable"]
    replayed = log.read("clicks", partition, 4, 10)
    xl = f'{{"t":{T - 1_000},"c":"XL","g":"link"}}'.encode()
    assert (replayed.offsets, replayed.values) == ([4], [xl])
    assert replay(log, store, late) == {}
    log.close()
    # The fix: a lateness that admits the click; the worker takes it at its new offset.
    fixed = backend_settings.replace(allowed_lateness_s=3600)
    (app,) = [app for app in apps if app.name == "clicks"]
    worker = Worker(app, app.streams[0], open_log(fixed), store, fixed, range(fixed.partitions))
    worker.start()
    worker.run(lambda: False, until_caught_up=True)
    assert countries(store) == {"US": 1, "FR": 1, "XL": 1}
    assert store.dead_letter_counts(CLICKS) == {"undecodable": 1}


def test_a_replay_takes_the_partition_and_offsets_asked_and_nothing_past_the_end(
    settings: Settings, store: Store, log: Log
) -> None:
    apps = load_apps(settings)
    log.create_topic("heartbeats", settings.partitions)
    records = [b"a", b"b", b"c", b"d"]
    log.append("heartbeats", 1, records)
    letters = [DeadLetter(1, offset, "refused", value) for offset, value in enumerate(records)]
    store.commit(HEARTBEATS, [], {}, [*letters, DeadLetter(1, 9, "refused", b"x")])
    asked = given(apps, stream="heartbeats", partition="1", offsets="1,3-20")
    assert replay(log, store, plan_replay(apps, asked)) == {1: 2}
    assert log.read("heartbeats", 1, 4, 10).values == [b"b", b"d"]
    assert listed(apps, store) == [(HEARTBEATS, 1, 9), (HEARTBEATS, 1, 2), (HEARTBEATS, 1, 0)]


def test_a_record_dead_lettered_again_by_a_worker_is_not_replayed_again(
    settings: Settings, store: Store, log: Log
) -> None:
    """Records the replay appends are past the ends it started from: a worker that
    dead-letters them again (the cause is not fixed) does not make it loop."""
    apps = load_apps(settings)
    log.create_topic("heartbeats", settings.partitions)
    log.append("heartbeats", 0, [b"a"])
    store.commit(HEARTBEATS, [], {}, [DeadLetter(0, 0, "refused", b"a")])
    append = log.append

    def refused_again(topic: str, partition: int, values: list[bytes]) -> int:
        first = append(topic, partition, values)
        store.commit(HEARTBEATS, [], {}, [DeadLetter(partition, first, "refused", values[0])])
        return first

    log.append = refused_again  # type: ignore[method-assign]
    assert replay(log, store, plan_replay(apps, {"stream": "heartbeats"})) == {0: 1}
    assert listed(apps, store) == [(HEARTBEATS, 0, 1)]


def test_a_replay_never_loses_a_record(backend_settings: Settings, store: Store, log: Log) -> None:
    """A record leaves the dead letters only once it is in the log again: an append
    that fails leaves it there; a removal that fails leaves it in both."""
    settings = backend_settings
    apps = load_apps(settings)
    log.create_topic("heartbeats", settings.partitions)
    log.append("heartbeats", 2, [b"r"])
    store.commit(HEARTBEATS, [], {}, [DeadLetter(2, 0, "refused", b"r")])

    def fail(*args: object) -> None:
        raise LogUnavailable("the disk is full")

    log.append, append = fail, log.append  # type: ignore[method-assign]
    with pytest.raises(LogUnavailable):
        replay(log, store, plan_replay(apps, {"stream": "heartbeats"}))
    assert log.end_offsets("heartbeats")[2] == 1 and listed(apps, store) == [(HEARTBEATS, 2, 0)]

    def store_gone(*args: object) -> None:
        raise StoreUnavailable("the store is gone")

    log.append, store.delete_dead_letters = append, store_gone  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        replay(log, store, plan_replay(apps, {"stream": "heartbeats"}))
    assert log.read("heartbeats", 2, 1, 10).values == [b"r"]
    assert listed(apps, store) == [(HEARTBEATS, 2, 0)]


def test_a_replay_names_one_stream_read_by_one_app(settings: Settings) -> None:
    apps = load_apps(settings)
    with pytest.raises(InvalidQuery, match="stream is required"):
        plan_replay(apps, {"reason": "late"})
    (clicks,) = [app for app in apps if app.name == "clicks"]
    twice = [*apps, dataclasses.replace(clicks, name="clicks_v2")]
    with pytest.raises(InvalidQuery, match="stream clicks is read by apps clicks, clicks_v2: "
                       "each of them would process a replayed record again"):  # fmt: skip
        plan_replay(twice, {"stream": "clicks"})
    second = create_app(settings)
    second.version = 2
    with pytest.raises(InvalidQuery, match=r"stream clicks is read by apps clicks, clicks@2: "
                       r".* \(retire all versions of an app but one first"):  # fmt: skip
        plan_replay([clicks, second], {"stream": "clicks"})


ENV = {"KAPPAFLOW_PARTITIONS": "4", "COLUMNS": "200"}


def test_the_commands_list_and_replay_what_the_filters_choose(
    backend_settings: Settings, dead_clicks: Store
) -> None:
    data = ["--data-dir", backend_settings.data_dir]
    env = {**ENV, "KAPPAFLOW_STORE": backend_settings.store,
           "KAPPAFLOW_POSTGRES_DSN": backend_settings.postgres_dsn}  # fmt: skip
    runner = CliRunner()
    as_json = runner.invoke(main, ["dead-letters", "list", *data, "--format", "json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    found = json.loads(as_json.output)
    assert [(f["stream"], f["reason"].split(":")[0]) for f in found] == [
        ("clicks", "late"), ("clicks", "undecodable")
    ]  # fmt: skip
    assert found[1]["record"] == '{"t": "soon"}'
    as_csv = runner.invoke(main, ["dead-letters", "list", *data, "--format", "csv",
                                  "--reason", "undecodable"], env=env)  # fmt: skip
    assert as_csv.output.splitlines() == [
        "app,stream,group,partition,offset,reason,record,encoding,dead_lettered_at",
        f'clicks,clicks,clicks.clicks,{found[1]["partition"]},0,"{found[1]["reason"]}",'
        f'"{{""t"": ""soon""}}",utf-8,{found[1]["dead_lettered_at"]}',
    ]
    table = runner.invoke(main, ["dead-letters", "list", *data, "--limit", "1"], env=env).output
    assert "1 dead letter(s), the newest first" in table
    assert f"late: event time {(T - 1_000) * 1000} is below the watermark" in table
    assert f'{{"t":{T - 1_000},"c":"XL","g":"link"}}' in table
    assert "(the newest 1: --limit shows more)" in table
    replayed = runner.invoke(main, ["dead-letters", "replay", *data, "--stream", "clicks",
                                    "--reason", "late"], env=env)  # fmt: skip
    assert replayed.exit_code == 0, replayed.output
    partition = found[0]["partition"]
    assert replayed.output == (f"replayed 1 dead letter(s) of clicks to its log (partition "
                               f"{partition}: 1); the workers process them again\n")  # fmt: skip
    again = runner.invoke(main, ["dead-letters", "replay", *data, "--stream", "clicks",
                                 "--reason", "late"], env=env)  # fmt: skip
    assert again.output == "no dead letters of clicks match: nothing replayed\n"


def test_the_commands_name_what_is_wrong_and_the_fix(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", settings.data_dir]
    missing = runner.invoke(main, ["dead-letters", "list", "--data-dir", str(tmp_path / "x")])
    assert missing.exit_code == 2 and f"no store at {tmp_path / 'x'}" in missing.output
    open_store(settings).close()
    bad = runner.invoke(main, ["dead-letters", "list", *data, "--since", "noon"], env=ENV)
    assert bad.exit_code == 2
    assert "--since must be unix seconds or an RFC 3339 time with a zone, got 'noon'" in bad.output
    no_log = runner.invoke(main, ["dead-letters", "replay", *data, "--stream", "clicks"], env=ENV)
    assert no_log.exit_code == 2 and f"no log in {settings.log_path}" in no_log.output
    held = open_log(settings, writer=True)  # as kappaflow up holds it
    held.create_topic("clicks", settings.partitions)
    unnamed = runner.invoke(main, ["dead-letters", "replay", *data], env=ENV)
    assert unnamed.exit_code == 2 and "--stream is required" in unnamed.output
    busy = runner.invoke(main, ["dead-letters", "replay", *data, "--stream", "clicks"], env=ENV)
    held.close()
    assert busy.exit_code == 1
    assert "is writing to the log" in busy.output
    assert "stop it (kappaflow up, or kappaflow ingest), replay, then start it again" in busy.output
