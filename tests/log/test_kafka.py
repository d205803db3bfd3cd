"""The Kafka log against a real Apache Kafka broker (one for the session; each test
names topics of its own).

Each append is a transaction, whose commit takes one offset in each of its partitions
(a control record, never read): an append of 3 records to an empty partition ends
it at 4."""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from kappaflow.apps.video.app import Heartbeat, all_progress, create_app
from kappaflow.errors import LogError, LogUnavailable, OffsetOutOfRange
from kappaflow.events.registry import TOPIC, register, registered
from kappaflow.events.versions import json_schema
from kappaflow.ingest.appender import Appender
from kappaflow.log import kafka as kafka_module
from kappaflow.log import open_log
from kappaflow.log.kafka import KafkaLog
from kappaflow.log.partitioner import partition_for
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.stream.worker import Worker
from kappaflow.testing import wait_until
from kappaflow.testing.kafka import KafkaCluster


def read(log: KafkaLog, topic: str, partition: int, offset: int, count: int):
    """Kafka may answer a read with nothing while it fetches: poll a little."""
    for _ in range(100):
        batch = log.read(topic, partition, offset, count)
        if batch.values:
            return batch
    return batch


def read_to(log: KafkaLog, topic: str, partition: int, offset: int, end: int) -> list[bytes]:
    """The values from ``offset`` on, read until the next offset is ``end``."""
    values: list[bytes] = []
    for _ in range(100):
        batch = log.read(topic, partition, offset, 100)
        values += batch.values
        offset = batch.next_offset
        if offset >= end:
            assert offset == end
            return values
    raise AssertionError(f"the reads stopped at {offset}, not {end}")


def ends_at(log: KafkaLog, topic: str, expected: dict[int, int]) -> None:
    """The end offsets reach ``expected``: a commit's control records are written to its
    partitions just after the commit returns."""
    wait_until(lambda: log.end_offsets(topic) == expected, 5, f"{topic} ends at {expected}")


@pytest.fixture
def kafka_bootstrap(shared_kafka: KafkaCluster) -> str:
    return shared_kafka.bootstrap_servers


@pytest.fixture
def log(kafka_bootstrap: str):
    the_log = KafkaLog(kafka_bootstrap)
    yield the_log
    the_log.close()


def test_append_read_and_offsets(log: KafkaLog, request: pytest.FixtureRequest) -> None:
    topic = f"t-{request.node.name[:20]}-append"
    log.create_topic(topic, 4)
    log.create_topic(topic, 4)  # idempotent
    assert log.partitions(topic) == 4
    assert log.append(topic, 1, [b"a", b"b", b"c"]) == 0
    assert log.append(topic, 1, [b"d"]) == 4  # after the first commit's control record
    ends_at(log, topic, {0: 0, 1: 6, 2: 0, 3: 0})
    assert log.start_offsets(topic) == {0: 0, 1: 0, 2: 0, 3: 0}
    batch = read(log, topic, 1, 1, 2)
    assert (batch.offsets, batch.values) == ([1, 2], [b"b", b"c"])
    rest = read(log, topic, 1, batch.next_offset, 100)
    assert (rest.offsets, rest.values, rest.next_offset) == ([4], [b"d"], 6)
    assert log.read(topic, 1, 6, 100) == ([], [], 6)
    again = read(log, topic, 1, 0, 1)  # a restart reads from an earlier offset
    assert again.values == [b"a"]


def test_a_read_from_a_control_record_steps_over_it(log: KafkaLog) -> None:
    """A reader that stopped before a commit's control record (a worker restored from
    there) reaches the end with no records, so its lag reaches 0."""
    log.create_topic("t-marker", 4)
    log.append("t-marker", 2, [b"a", b"b"])
    ends_at(log, "t-marker", {0: 0, 1: 0, 2: 3, 3: 0})
    assert read_to(log, "t-marker", 2, 2, 3) == []


def test_a_reader_sent_back_over_control_records_it_read_steps_over_them_again(
    log: KafkaLog,
) -> None:
    """The consumer applies a new position in its own thread, and answers the old one
    until then: here the very position it reaches again (a worker restored from the
    store, or another reader of the same log, sends it back)."""
    log.create_topic("t-back", 1)
    log.append("t-back", 0, [b"a", b"b"])
    ends_at(log, "t-back", {0: 3})
    for _ in range(20):
        assert read_to(log, "t-back", 0, 0, 3) == [b"a", b"b"]
        assert read_to(log, "t-back", 0, 2, 3) == []


def test_a_partition_whose_fetching_failed_is_fetched_again_from_where_the_reader_asks(
    log: KafkaLog,
) -> None:
    """The consumer stops fetching a partition on an error of it (here an offset past
    the end): the reader is told, and reading it again starts it anew."""
    log.create_topic("t-past", 1)
    log.append("t-past", 0, [b"a", b"b"])
    ends_at(log, "t-past", {0: 3})
    with pytest.raises(OffsetOutOfRange):
        for _ in range(100):
            log.read("t-past", 0, 5, 10)
    log.append("t-past", 0, [b"c", b"d", b"e", b"f"])  # offsets 3 to 6
    ends_at(log, "t-past", {0: 8})
    assert read_to(log, "t-past", 0, 5, 8) == [b"e", b"f"]


class CountingCommits:
    """The log's real producer, counting its transactions' commits (each waits for
    every delivery report of its records)."""

    def __init__(self, producer: Any) -> None:
        self.producer, self.commits = producer, 0

    def commit_transaction(self, *args: Any) -> None:
        self.commits += 1
        self.producer.commit_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)


def test_appends_to_several_partitions_wait_once_for_all(log: KafkaLog) -> None:
    log.create_topic("t-together", 4)
    log.append("t-together", 2, [b"before"])
    producer = log._producer = CountingCommits(log._producer_handle())
    records = {p: [f"{p}-{n}".encode() for n in range(20)] for p in (0, 2, 3)}
    assert log.append_partitions("t-together", records) == {0: 0, 2: 2, 3: 0}
    assert producer.commits == 1, "one transaction for the partitions together"
    ends = {0: 21, 1: 0, 2: 23, 3: 21}
    ends_at(log, "t-together", ends)
    for partition, values in records.items():
        start = 2 if partition == 2 else 0
        assert read_to(log, "t-together", partition, start, ends[partition]) == values


def test_a_full_producer_queue_is_emptied_not_refused(kafka_bootstrap: str) -> None:
    small = KafkaLog(kafka_bootstrap, {"queue.buffering.max.messages": "10"})
    small.create_topic("t-full", 4)
    records = {p: [f"{p}-{n}".encode() for n in range(25)] for p in range(4)}
    assert small.append_partitions("t-full", records) == dict.fromkeys(range(4), 0)
    ends_at(small, "t-full", dict.fromkeys(range(4), 26))
    assert read(small, "t-full", 3, 0, 100).values == records[3]
    small.close()


def test_an_unreachable_cluster_is_log_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker listens on the port: the producer cannot start its transactions."""
    monkeypatch.setattr(kafka_module, "TIMEOUT_S", 0.5)
    dead = KafkaLog("127.0.0.1:1")
    with pytest.raises(LogUnavailable, match="cannot start a producer"):
        dead.append_partitions("t-dead", {0: [b"x"]})


def test_a_producer_queue_that_stays_full_is_log_unavailable(
    kafka_broker: KafkaCluster, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The broker dies after the producer started: its queue of 5 never empties; later
    appends fail too, none hangs, and the producers given up stop connecting."""
    admin = KafkaLog(kafka_broker.bootstrap_servers)  # closed: only the producers remain
    admin.create_topic("t-gone", 1)
    admin.close()
    small = KafkaLog(kafka_broker.bootstrap_servers, {"queue.buffering.max.messages": "5"})
    small.append("t-gone", 0, [b"x"])
    kafka_broker.nodes[0].kill()
    monkeypatch.setattr(kafka_module, "TIMEOUT_S", 0.5)
    with pytest.raises(LogUnavailable, match=r"queue stayed full for 0\.5 s"):
        small.append_partitions("t-gone", {0: [b"x"] * 10})
    for _ in range(2):  # a commit that times out, then a producer that cannot start
        with pytest.raises(LogUnavailable):
            small.append("t-gone", 0, [b"x"])
    capfd.readouterr()
    time.sleep(0.5)  # a live client would retry the connection every 100 ms or so
    assert "Connect to" not in capfd.readouterr().err
    small.close()


def test_a_failed_append_is_aborted_whole(log: KafkaLog) -> None:
    """One partition refuses its record (it does not exist): the transaction is aborted,
    the other partition's record goes nowhere, and the next append is served."""
    log.create_topic("t-abort", 4)
    log.append("t-abort", 0, [b"before"])
    with pytest.raises(LogUnavailable, match="2 records not appended to t-abort"):
        log.append_partitions("t-abort", {0: [b"lost"], 9: [b"nowhere"]})
    log.append("t-abort", 0, [b"after"])
    values, offset = [], 0
    while b"after" not in values and len(values) < 3:
        batch = read(log, "t-abort", 0, offset, 100)
        values, offset = values + batch.values, batch.next_offset
    assert values == [b"before", b"after"]


class FailingCommit(CountingCommits):
    """The log's real producer, whose commit times out once its records are on the
    broker (the transaction coordinator unreachable), for good."""

    def commit_transaction(self, *args: Any) -> None:
        assert self.producer.flush(10) == 0
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit timed out"))


class CommitLostAnswer(CountingCommits):
    """The log's real producer, whose commit goes through but whose answer is lost."""

    def commit_transaction(self, *args: Any) -> None:
        self.producer.commit_transaction(*args)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "connection reset"))


class RetriableCommit(CountingCommits):
    """The log's real producer, whose first commit times out (a leader moving)."""

    def commit_transaction(self, *args: Any) -> None:
        self.commits += 1
        if self.commits == 1:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))
        self.producer.commit_transaction(*args)


def test_a_commit_of_unknown_outcome_that_was_aborted_is_refused(log: KafkaLog) -> None:
    """On a real broker the records of a failed append are written, then marked aborted
    when a new producer fences the one that failed: they take offsets, but no
    ``read_committed`` reader ever gets them."""
    log.create_topic("t-aborted", 2)
    log.append("t-aborted", 0, [b"before"])
    failing = log._producer = FailingCommit(log._producer_handle())
    with pytest.raises(LogUnavailable, match="3 records not appended to t-aborted"):
        log.append_partitions("t-aborted", {0: [b"lost-1", b"lost-2"], 1: [b"lost-3"]})
    assert log._producer_handle() is not failing
    log.append("t-aborted", 0, [b"after"])
    ends = {0: 7, 1: 2}  # before+commit, 2 aborted+abort marker, after+commit
    ends_at(log, "t-aborted", ends)
    assert read_to(log, "t-aborted", 0, 0, ends[0]) == [b"before", b"after"]
    assert read_to(log, "t-aborted", 1, 0, ends[1]) == []


def test_nothing_of_an_aborted_append_reaches_a_result_table(
    settings: Settings, kafka_broker: KafkaCluster
) -> None:
    """A worker reading past an aborted append's records (in the log, marked aborted)
    processes only the committed ones around them."""
    on_kafka = settings.replace(log="kafka", kafka_bootstrap_servers=kafka_broker.bootstrap_servers)
    app = create_app(on_kafka)
    writer = KafkaLog(on_kafka.kafka_bootstrap_servers)
    writer.create_topic("heartbeats", on_kafka.partitions)
    appender = Appender(writer, app.streams[0], on_kafka.partitions)

    def beats(*users_and_seconds: tuple[str, int]) -> list[Heartbeat]:
        return [Heartbeat(user, "v", s, s * 1000, "heartbeat") for user, s in users_and_seconds]

    appender.append(beats(("kept", 0)))
    writer._producer = FailingCommit(writer._producer_handle())
    with pytest.raises(LogUnavailable):
        appender.append(beats(("lost", 0), ("lost", 5), ("kept", 5)))
    assert sum(writer.end_offsets("heartbeats").values()) >= 5, "the aborted ones are there"
    appender.append(beats(("kept", 10), ("other", 0), ("other", 5)))
    writer.close()

    log, store = KafkaLog(on_kafka.kafka_bootstrap_servers), open_store(on_kafka)
    w = Worker(app, app.streams[0], log, store, on_kafka, range(on_kafka.partitions))
    w.start()
    wait_until(lambda: not w.poll() and w.caught_up(), 30, "the worker caught up")
    progress = {p.user_id: p.resume_position_s for p in all_progress(store)}
    assert progress == {"kept": 10, "other": 5}
    log.close()


def test_a_commit_whose_answer_was_lost_is_found_committed(log: KafkaLog) -> None:
    """A 503 would make the client send the records again: the log finds out that they
    were committed and returns as for any commit."""
    log.create_topic("t-lost-answer", 2)
    log._producer = CommitLostAnswer(log._producer_handle())
    assert log.append_partitions("t-lost-answer", {0: [b"a", b"b"], 1: [b"c"]}) == {0: 0, 1: 0}
    assert read_to(log, "t-lost-answer", 0, 0, 3) == [b"a", b"b"]
    assert read_to(log, "t-lost-answer", 1, 0, 2) == [b"c"]


def test_a_retriable_commit_failure_is_retried(log: KafkaLog) -> None:
    log.create_topic("t-retried", 1)
    retrying = log._producer = RetriableCommit(log._producer_handle())
    assert log.append("t-retried", 0, [b"a"]) == 0
    assert retrying.commits == 2
    assert read_to(log, "t-retried", 0, 0, 2) == [b"a"]


def test_a_topic_with_other_partitions_is_refused(log: KafkaLog) -> None:
    log.create_topic("t-mismatch", 4)
    with pytest.raises(LogError, match="has 4 partitions, the settings say 8"):
        log.create_topic("t-mismatch", 8)


def test_reads_from_several_partitions_interleaved(log: KafkaLog) -> None:
    log.create_topic("t-many", 4)
    for partition in range(4):
        log.append("t-many", partition, [f"{partition}-{n}".encode() for n in range(50)])
    seen = {p: [] for p in range(4)}
    offsets = dict.fromkeys(range(4), 0)
    for _ in range(100):  # reads that find nothing buffered wait 50 ms for a fetch
        for partition in range(4):
            batch = log.read("t-many", partition, offsets[partition], 7)
            seen[partition] += batch.values
            offsets[partition] = batch.next_offset
        if all(offset >= 50 for offset in offsets.values()):
            break
    assert all(seen[p] == [f"{p}-{n}".encode() for n in range(50)] for p in range(4))


def test_acknowledged_progress_is_the_consumer_group_offset_and_read_back(log: KafkaLog) -> None:
    from confluent_kafka import Consumer, TopicPartition

    log.create_topic("t-ack", 4)
    log.append("t-ack", 0, [b"x"] * 5)
    log.acknowledge("video.heartbeats", "t-ack", {0: 3, 1: 0})
    probe = Consumer({**log.config, "group.id": "video.heartbeats"})
    committed = probe.committed([TopicPartition("t-ack", 0), TopicPartition("t-ack", 1)], 10)
    probe.close()
    assert [tp.offset for tp in committed] == [3, 0]
    assert log.acknowledged("video.heartbeats", "t-ack") == {0: 3, 1: 0}
    assert log.acknowledged("another.group", "t-ack") == {}


def test_close_ends_every_client_and_a_closed_log_opens_again(kafka_bootstrap: str) -> None:
    """librdkafka runs each client (producer, admin, consumers) in threads of its own,
    which end when the client is destroyed: a closed log leaves none behind, where
    clients kept until the log is collected go on talking to the cluster."""
    process = psutil.Process()
    before = process.num_threads()
    the_log = KafkaLog(kafka_bootstrap)
    the_log.create_topic("t-close", 4)
    the_log.append("t-close", 2, [b"a", b"b"])
    assert read(the_log, "t-close", 2, 0, 10).values == [b"a", b"b"]
    the_log.acknowledge("g", "t-close", {2: 2})
    assert process.num_threads() > before

    the_log.close()
    assert process.num_threads() <= before  # earlier tests' clients may still be ending

    assert the_log.append("t-close", 2, [b"c"]) == 3  # after the first commit's control record
    assert read(the_log, "t-close", 2, 1, 10).values == [b"b", b"c"]
    the_log.close()
    assert process.num_threads() <= before  # earlier tests' clients may still be ending


def test_keys_go_where_kafkas_default_partitioner_sends_them() -> None:
    # murmur2-based, as Java clients and librdkafka's murmur2_random partitioner do
    assert partition_for("user-1", 8) == partition_for("user-1", 8)
    assert {partition_for(f"user-{n}", 8) for n in range(100)} == set(range(8))


def test_the_settings_name_the_cluster_and_the_client_settings(settings: Settings) -> None:
    on_kafka = settings.replace(
        log="kafka", kafka_bootstrap_servers="k1:9092,k2:9092",
        kafka_client_config=("security.protocol=SASL_SSL", "sasl.mechanism=PLAIN"),
    )  # fmt: skip
    the_log = open_log(on_kafka)
    assert isinstance(the_log, KafkaLog)
    assert the_log.config == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
    }


def test_the_schema_registry_is_a_topic_kept_forever(log: KafkaLog, kafka_bootstrap: str) -> None:
    register(log, create_app(Settings()).streams)
    reader = KafkaLog(kafka_bootstrap)  # another process's view
    try:
        assert registered(reader)["heartbeats", 1] == json_schema(Heartbeat)
    finally:
        reader.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, TOPIC)]).values()
    config = future.result(timeout=30)
    assert (config["retention.ms"].value, config["retention.bytes"].value) == ("-1", "-1")
