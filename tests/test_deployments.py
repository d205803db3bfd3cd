"""App versions (`kappaflow.deployments`): their names, groups and tables; the store's
record of them (deploy, promote, retire) on SQLite and PostgreSQL; an app version's
queries reading its own tables under the app's names; and the CLI's refusals."""

from __future__ import annotations

import json
from contextlib import closing

import msgspec
import pytest
import video_v2
from click.testing import CliRunner

from kappaflow.app import App, Batch, FunctionProcessor, Rows, State, Stream
from kappaflow.apps.video.app import create_app as create_video
from kappaflow.cli import main
from kappaflow.deployments import VersionReads, deploy, live, parse_ref, running
from kappaflow.errors import AppError, StaleOwnership
from kappaflow.log import open_log
from kappaflow.server import serve
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import AppVersion, PartitionCommit, ScaleDecision, ScalingState
from kappaflow.store.tables import Table
from kappaflow.testing.services import serving


class Count(msgspec.Struct):
    key: str
    n: int


COUNTS = Table.of(Count, "key", name="counts", mode="add")
DISTINCT = Table("seen", (("key", "TEXT"), ("item", "TEXT")), ("key", "item"), "distinct",
                 counts=("counts", "n"))  # fmt: skip


class Event(msgspec.Struct):
    key: str
    ts: int


def counting(version: int) -> App:
    def process(state: State[int], batch: Batch) -> Rows:
        return {"counts": [Count(e.key, 1) for e in batch.events]}

    stream = Stream("events", Event, key="key", time="ts")
    return App("tally", [stream], [COUNTS, DISTINCT], {"events": FunctionProcessor(process, int)},
               version=version)  # fmt: skip


def test_a_version_from_2_on_has_groups_and_result_tables_of_its_own() -> None:
    first, second = counting(1), counting(2)
    stream = first.streams[0]
    assert (first.group(stream), second.group(stream)) == ("tally.events", "tally@2.events")
    assert first.renames == {} and [t.name for t in first.all_tables] == ["counts", "seen"]
    assert second.renames == {"counts": "counts_v2", "seen": "seen_v2"}
    stored = {table.name: table for table in second.all_tables}
    assert stored["seen_v2"].counts == ("counts_v2", "n"), "a distinct count's table too"
    video = video_v2.create_app(Settings())
    shared = {lookup.table.name for lookup in video.lookups}
    assert shared and shared <= {table.name for table in video.all_tables}, "reference shared"
    assert all(name.endswith("_v2") for name in video.renames.values())
    assert not shared & set(video.renames)
    with pytest.raises(AppError, match="version must be a whole number from 1, got 0"):
        counting(0)


def test_an_app_version_is_named_app_at_version() -> None:
    assert parse_ref("video@12") == ("video", 12)
    for bad in ("video", "video@0", "video@x", "Video@2", "video@2@3"):
        with pytest.raises(AppError, match="names no app version"):
            parse_ref(bad)


def test_the_store_records_deploys_promotes_and_retires_versions(backend_settings) -> None:
    """One live version per app, switched in one transaction; a retired version's
    tables and progress are gone, and a late commit of its group is refused."""
    first, second = counting(1), counting(2)
    with closing(open_store(backend_settings)) as store:
        for app in (first, second):
            store.create_tables(app.all_tables)
        record = AppVersion("tally", 1, "m1", "deployed", 1.0, "from the start")
        assert store.deploy(record, {"tally.events": {0: 0}}) == "live"
        assert store.deploy(record._replace(version=2, module="m2"),
                            {"tally@2.events": {0: 5, 1: 7}}) == "deployed"  # fmt: skip
        assert store.committed_offsets("tally@2.events") == {0: 5, 1: 7}
        assert store.claim("tally@2.events", [1], "w")[1].next_offset == 7
        assert [(v.ref, v.status) for v in store.app_versions()] == [
            ("tally@1", "live"), ("tally@2", "deployed")]  # fmt: skip
        assert [app.ref for app in live([second, first], store)] == ["tally@1"]

        store.promote("tally", 2)
        assert [v.status for v in store.app_versions()] == ["deployed", "live"]
        assert [app.ref for app in live([first, second], store)] == ["tally@2"]
        with pytest.raises(AppError, match="tally@2 is live, not deployed"):
            store.promote("tally", 2)
        with pytest.raises(AppError, match="tally@3 is not deployed, not deployed"):
            store.promote("tally", 3)
        with pytest.raises(AppError, match="tally@2 is live, not deployed"):
            store.retire("tally", 2, ["counts_v2"], ["tally@2.events"])

        generation = store.claim("tally.events", [0], "w")[0].generation
        store.commit("tally.events", [PartitionCommit(0, generation, 3, b"")],
                     {"counts": [Count("a", 1)]})  # fmt: skip
        for pool in ("tally@1", "tally@2"):  # what the versions' autoscalers recorded
            store.record_scaling(ScalingState(pool, 1, 1, 0, 0, 10, False, 1.0),
                                 ScaleDecision(pool, 1.0, 2, 1, 0, "hpa"))  # fmt: skip
        store.retire("tally", 1, ["counts", "seen"], ["tally.events"])
        assert store.app_versions()[0].status == "retired"
        kept = [store.scaling(), store.scale_decisions()]
        assert [[x.pool for x in found] for found in kept] == [["tally@2"]] * 2
        assert store.committed_offsets("tally.events") == {}
        with pytest.raises(StaleOwnership):
            store.commit("tally.events", [PartitionCommit(0, generation, 4, b"")], {})
        with pytest.raises(Exception, match="counts"):
            store.query("SELECT * FROM counts")
        assert store.query("SELECT count(*) FROM counts_v2") == [(0,)], "v2's tables stay"
        again = store.deploy(record._replace(deployed_at=2.0), {"tally.events": {0: 0}})
        assert again == "deployed" and store.app_versions()[0].status == "deployed"


def test_a_versions_queries_read_its_own_tables_under_the_apps_names(backend_settings) -> None:
    second = counting(2)
    with closing(open_store(backend_settings)) as store:
        store.create_tables([*counting(1).all_tables, *second.all_tables])
        store.upsert({"counts": [Count("a", 1)], "counts_v2": [Count("a", 2), Count("b", 3)]})
        reads = VersionReads(store, second.renames)
        assert reads.select(COUNTS, order_by="key") == [Count("a", 2), Count("b", 3)]
        assert reads.query("SELECT sum(n) FROM counts WHERE key = ?", ("b",)) == [(3,)]
        assert reads.query(
            "WITH big AS (SELECT key FROM counts WHERE n > ?) "
            "SELECT c.key, c.n FROM counts c JOIN big USING (key) ORDER BY c.key",
            (1,),
        ) == [("a", 2), ("b", 3)]
        assert reads.query(
            "with recursive up(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM up WHERE i < 3) "
            "SELECT count(*) FROM up, counts"
        ) == [(6,)]
        assert store.query("SELECT n FROM counts") == [(1,)], "the store reads version 1's"
        assert reads.version("counts") == store.version("counts")


def test_the_settings_apps_are_recorded_and_deployed_versions_run(settings: Settings) -> None:
    settings = settings.replace(apps=("video",))
    with closing(open_store(settings)) as store, closing(open_log(settings, writer=True)) as log:
        assert [app.ref for app in running(settings, store)] == ["video@1"]
        second = video_v2.create_app(settings)
        second.module = "video_v2"
        assert deploy(settings, create_video(settings), store, log) == "live"
        assert deploy(settings, second, store, log) == "deployed"
        versions = running(settings, store)
        assert [app.ref for app in versions] == ["video@1", "video@2"]
        assert [app.ref for app in live(versions, store)] == ["video@1"]
        assert running(settings, store, built=versions)[1] is versions[1], "built once"
        store.promote("video", 2)
        store.retire("video", 1, [], [])
        assert [app.ref for app in running(settings, store)] == ["video@2"], "not 1 again"


def test_the_apps_commands_refuse_what_they_cannot_do(settings: Settings) -> None:
    env = settings.replace(apps=("video",)).to_environ()

    def run(*arguments: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["apps", *arguments], env=env)
        return result.exit_code, result.output

    assert run("deploy", "video")[0] == 2 and "names no app version" in run("deploy", "video")[1]
    code, out = run("deploy", "video@1")
    assert code == 1 and f"kappaflow apps deploy: no log in {settings.log_path}" in out
    with closing(open_log(settings, writer=True)) as log:
        log.create_topic("heartbeats", settings.partitions)
        log.append("heartbeats", 0, [b'{"user_id": "u", "video_id": "v", "position_s": 0, '
                                     b'"ts": 1767225600000}'] * 5)  # fmt: skip
    code, out = run("deploy", "video@3")
    assert code == 1 and "no app of KAPPAFLOW_APPS is video@3" in out
    code, out = run("deploy", "video@3", "--module", "video_v2")
    assert code == 1 and "module video_v2 builds video@2, not video@3" in out
    code, out = run("deploy", "video@1")
    assert code == 0 and "video@1 is live" in out
    code, out = run("deploy", "video@1")
    assert code == 1 and "video@1 is live already" in out
    assert run("deploy", "video@2", "--module", "video_v2")[0] == 0
    code, out = run("promote", "video@2", "--max-lag", "4")
    assert code == 1 and "video@2 is 5 records behind, more than 4: wait until" in out
    code, out = run("retire", "video@1")
    assert code == 1 and "video@1 is live, not deployed" in out
    code, out = run("promote", "video@2", "--max-lag", "4", "--force")
    assert code == 0 and "video@2 is live (5 records behind)" in out
    rows = {row["app"]: row for row in json.loads(run("list", "--json", "--pace-s", "0")[1])}
    assert (rows["video@1"]["status"], rows["video@2"]["status"]) == ("deployed", "live")
    assert rows["video@2"]["lag"] == 5 and rows["video@2"]["eta_s"] is None
    assert rows["video@1"]["note"] == "from the log's earliest records"
    code, out = run("retire", "video@1")
    assert code == 0 and "video@1 is retired" in out
    code, out = run("retire", "video@1")
    assert code == 1 and "video@1 is not running; running: video@2" in out


def test_a_version_deployed_after_retention_starts_at_the_earliest_record_and_says_so(
    settings: Settings,
) -> None:
    settings = settings.replace(apps=("video",), log_segment_bytes=4096)
    record = b'{"user_id": "u", "video_id": "v", "position_s": 0, "ts": 1767225600000}'
    with closing(open_store(settings)) as store, closing(open_log(settings, writer=True)) as log:
        log.create_topic("heartbeats", settings.partitions)
        for _ in range(50):  # segments roll between appends
            log.append("heartbeats", 1, [record] * 10)
        log.acknowledge("video.heartbeats", "heartbeats", {1: 500})
        assert log.apply_retention("heartbeats", ["video.heartbeats"], 4096, 0) > 0
        first = log.start_offsets("heartbeats")[1]
        assert 0 < first < 500
        second = video_v2.create_app(settings)
        second.module = "video_v2"
        assert deploy(settings, second, store, log) == "live"
        note = store.app_versions()[0].note
        assert note == (f"from the log's earliest records: retention had deleted heartbeats "
                        f"partition 1 below {first:,}, which it never saw")  # fmt: skip
        assert store.committed_offsets("video@2.heartbeats") == {
            p: first if p == 1 else 0 for p in range(settings.partitions)}  # fmt: skip


def test_a_version_deployed_from_a_time_starts_at_its_first_event_in_each_partition(
    settings: Settings,
) -> None:
    """Event times as ingest logs them (ms, RFC 3339, a later version's tag), one that
    does not decode passed over, a partition without a later event at its end."""
    env = settings.replace(apps=("video",)).to_environ()

    def beat(ts: str) -> bytes:
        return b'{"user_id": "u", "video_id": "v", "position_s": 0, "ts": %s}' % ts.encode()

    with closing(open_log(settings, writer=True)) as log:
        log.create_topic("heartbeats", settings.partitions)
        log.append("heartbeats", 0, [beat("1767225600000"), b"{not json", beat("1767225660000"),
                                     b"2\x1e" + beat('"2026-01-01T00:02:00Z"')])  # fmt: skip
        log.append("heartbeats", 1, [beat('"2026-01-01T00:00:30Z"'), b"{}", beat("1767225601000"),
                                     beat('"2026-01-01T00:01:00.000Z"')])  # fmt: skip
        log.append("heartbeats", 2, [beat("1767225600000")])
    result = CliRunner().invoke(main, ["apps", "deploy", "video@2", "--module", "video_v2",
                                       "--from", "2026-01-01T00:01:00Z"], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "its workers start from each partition's first record of event time " \
           "2026-01-01T00:01:00Z or later" in result.output  # fmt: skip
    with closing(open_store(settings)) as store:
        assert store.committed_offsets("video@2.heartbeats") == {0: 2, 1: 3, 2: 1, 3: 0}
    bad = CliRunner().invoke(main, ["apps", "deploy", "video@2", "--from", "yesterday"], env=env)
    assert bad.exit_code == 2 and "--from must be unix seconds" in bad.output


def test_a_retired_versions_tables_are_not_created_again_by_another_process(
    backend_settings,
) -> None:
    """A process that created version 1's tables, creating another version's after
    version 1 was retired elsewhere, leaves them dropped."""
    with closing(open_store(backend_settings)) as serving, closing(
        open_store(backend_settings)) as retiring:  # fmt: skip
        serving.create_tables(counting(1).all_tables)
        record = AppVersion("tally", 1, "m1", "deployed", 1.0, "")
        retiring.deploy(record, {})
        retiring.deploy(record._replace(version=2), {})
        retiring.promote("tally", 2)
        retiring.retire("tally", 1, ["counts", "seen"], ["tally.events"])
        serving.create_tables(counting(3).all_tables)
        assert serving.query("SELECT count(*) FROM counts_v3") == [(0,)]
        with pytest.raises(Exception, match="counts"):
            serving.query("SELECT count(*) FROM counts")


def test_metrics_show_a_version_deployed_after_the_server_started(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.replace(apps=("video",))
    monkeypatch.setattr(serve, "REREAD_S", 0.0)
    with serving(settings) as client:
        assert 'group="video.heartbeats"' in client.get("/metrics").text
        second = video_v2.create_app(settings)
        second.module = "video_v2"
        with closing(open_store(settings)) as store, closing(open_log(settings)) as log:
            assert deploy(settings, second, store, log) == "deployed"
        assert 'kappaflow_lag{group="video@2.heartbeats"' in client.get("/metrics").text
