"""What only a real Kafka cluster shows: kappaflow against Apache Kafka brokers started
by the tests (one, or three with replication 3 and ``min.insync.replicas`` 2), with
brokers killed and workers paused mid-load."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest

from kappaflow.log.kafka import SETTLE_TIMEOUT_S, KafkaLog
from kappaflow.scale.policy import keda_lag
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.testing import wait_until
from kappaflow.testing.kafka import KafkaCluster, kafka_cluster
from kappaflow.up import free_port

pytestmark = pytest.mark.integration
CLICKS = "/v1/streams/clicks/events"
GROUP = "clicks.clicks"


@pytest.fixture
def kafka3(kafka_libs: Path) -> Iterator[KafkaCluster]:
    """A fresh cluster of three brokers (each also a controller)."""
    with kafka_cluster(kafka_libs, nodes=3) as cluster:
        yield cluster


def clicks_on(bootstrap: str, postgres_dsn: str) -> dict[str, str]:
    """The environment of a clicks-only stack on Kafka and PostgreSQL."""
    return {
        "KAPPAFLOW_APPS": "clicks",
        "KAPPAFLOW_LOG": "kafka",
        "KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAPPAFLOW_STORE": "postgres",
        "KAPPAFLOW_POSTGRES_DSN": postgres_dsn,
    }


ANSWER_S = SETTLE_TIMEOUT_S + 30
"""How long ingest may take to answer while the cluster fails: an append whose commit
had an unknown outcome is settled first."""


class ClickLoad(threading.Thread):
    """Posts batches of clicks, each with a target URL of its own, as a client would:
    a batch refused with 429 or 503 is sent again after its Retry-After. Keeps every
    answer's status and the URLs of the accepted batches."""

    def __init__(self, client: httpx.Client, batch: int = 100, pause_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.client, self.batch, self.pause_s = client, batch, pause_s
        self.stopping = threading.Event()
        self.accepted: list[str] = []
        self.statuses: list[int] = []
        self.refusals_without_retry_after = 0
        self.unexpected: list[str] = []
        """The answers neither accepted nor refused for a while."""

    def run(self) -> None:
        sent = 0
        while not self.stopping.is_set():
            urls = [f"https://example.com/{sent + n}" for n in range(self.batch)]
            now = int(time.time())
            clicks = [{"t": now, "g": f"g{i % 37}", "c": "NL", "u": url}
                      for i, url in enumerate(urls)]  # fmt: skip
            sent += self.batch
            while True:  # the same batch until it is accepted
                try:
                    # An append in flight when the broker died may take until its
                    # outcome is settled to be answered (SETTLE_TIMEOUT_S), not 30 s.
                    answer = self.client.post(CLICKS, json=clicks, timeout=ANSWER_S)
                except httpx.TimeoutException:
                    self.statuses.append(0)
                    continue
                self.statuses.append(answer.status_code)
                if answer.status_code == 202:
                    self.accepted += urls
                    break
                if answer.status_code not in (429, 503):
                    self.unexpected.append(f"{answer.status_code}: {answer.text}")
                    return
                if "retry-after" not in answer.headers:
                    self.refusals_without_retry_after += 1
                time.sleep(float(answer.headers.get("retry-after", 1)))
            time.sleep(self.pause_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(ANSWER_S + 10)


def url_counts(settings: Settings) -> dict[str, int]:
    store = open_store(settings)
    try:
        rows = store.query("SELECT value, events FROM click_counts_1h "
                           "WHERE dimension = 'url'")  # fmt: skip
        return dict(rows)
    finally:
        store.close()


def test_a_broker_killed_mid_load_loses_and_repeats_nothing(
    kafka3: KafkaCluster, postgres_dsn: str, kappaflow, tmp_path: Path
) -> None:
    """Three brokers; the leader of a partition is SIGKILLed during a load and started
    again later: ingest refuses with 503 and Retry-After (never a 500) while it cannot
    append, workers go on by themselves, and every accepted click counts exactly once,
    or is a late dead letter."""
    from confluent_kafka.admin import AdminClient

    env = clicks_on(kafka3.bootstrap_servers, postgres_dsn)
    with kappaflow("up", "--data-dir", str(tmp_path / "data"), env=env) as stack:
        load = ClickLoad(stack.client())
        load.start()
        # Under way first: a new transactional producer waits for its coordinator.
        wait_until(lambda: len(load.accepted) >= 500, 60, "clicks accepted before the kill")
        admin = AdminClient({"bootstrap.servers": kafka3.bootstrap_servers})
        leader = admin.list_topics("clicks", timeout=10).topics["clicks"].partitions[0].leader
        victim = next(node for node in kafka3.nodes if node.node_id == leader)
        victim.kill()
        time.sleep(10)
        victim.start()
        kafka3.wait_until_ready()
        before = len(load.accepted)
        wait_until(lambda: len(load.accepted) >= before + 500, 60,
                   "clicks accepted after the broker's return")  # fmt: skip
        load.stop()
        stack.wait_for_no_lag(timeout_s=120)
        output = stack.output.read_text()
    settings = Settings.load({}, {"store": "postgres", "postgres_dsn": postgres_dsn})
    counts = url_counts(settings)
    statuses = {status: load.statuses.count(status) for status in set(load.statuses)}
    assert set(statuses) <= {202, 503}, (statuses, load.unexpected, output[-3000:])
    assert load.refusals_without_retry_after == 0
    assert len(load.accepted) >= 1_000, statuses  # 500 before the kill, 500 after
    assert "exited with code" not in output, "no worker died: they waited for the broker"
    store = open_store(settings)
    try:
        dead = {msgspec.json.decode(payload)["u"]: reason.split(":")[0]
                for _, _, reason, payload in store.dead_letters("clicks.clicks")}  # fmt: skip
    finally:
        store.close()
    # A batch sent again after the outage keeps its clicks' times: one the partition's
    # clock passed meanwhile (idle_timeout_s without records) is late, a dead letter.
    assert set(dead.values()) <= {"late"}, dead
    assert counts == dict.fromkeys(set(load.accepted) - dead.keys(), 1), (
        f"{len(counts)} URLs counted, {len(load.accepted)} accepted, {len(dead)} late; "
        f"{sum(n > 1 for n in counts.values())} counted twice; statuses {statuses}"
    )
    assert dead.keys() <= set(load.accepted) and len(dead) < len(load.accepted) // 2


def post_clicks(client: httpx.Client, keys: list[str], count: int) -> None:
    now = int(time.time())
    clicks = [{"t": now, "g": keys[n % len(keys)], "u": f"https://example.com/{n}"}
              for n in range(count)]  # fmt: skip
    assert client.post(CLICKS, json=clicks).status_code == 202


def lag_metrics(client: httpx.Client, group: str) -> dict[int, int]:
    prefix = f'kappaflow_lag{{group="{group}",partition="'
    return {int(line[len(prefix):].split('"')[0]): int(float(line.split()[-1]))
            for line in client.get("/metrics").text.splitlines()
            if line.startswith(prefix)}  # fmt: skip


def what_keda_reads(
    bootstrap: str, group: str, topic: str
) -> tuple[dict[int, int], dict[int, int]]:
    """The log end offsets and the group's committed offsets, through Kafka's admin API
    (what KEDA's Kafka scaler reads)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    latest = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
    end = {tp.partition: f.result().offset for tp, f in admin.list_offsets(latest).items()}
    request = [ConsumerGroupTopicPartitions(group)]
    answer = admin.list_consumer_group_offsets(request)[group].result()
    committed = {tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0}
    return end, committed


def test_the_group_offsets_are_kappaflows_and_keda_sees_its_lag(
    kafka_bootstrap: str, postgres_dsn: str, kappaflow, tmp_path: Path
) -> None:
    """Once workers are caught up, the consumer group's committed offsets (read with
    Kafka's admin API, as KEDA reads them) equal the store's, on every partition, even
    one no click went to; while the workers are stopped, the lag KEDA computes from them
    equals kappaflow's ``kappaflow_lag`` on /metrics, partition by partition."""
    env = clicks_on(kafka_bootstrap, postgres_dsn)
    settings = Settings.load({}, {"store": "postgres", "postgres_dsn": postgres_dsn})
    policy = settings.scaling
    with kappaflow("up", "--workers", "1", "--data-dir", str(tmp_path / "data"), env=env) as up:
        client = up.client()
        post_clicks(client, ["only-key"], 500)  # one partition gets them all
        up.wait_for_no_lag()
        wait_until(lambda: len(what_keda_reads(kafka_bootstrap, GROUP, "clicks")[1]) == 8,
                   10, "every partition's offset committed to the group")  # fmt: skip
        end, committed = what_keda_reads(kafka_bootstrap, GROUP, "clicks")
        store = open_store(settings)
        assert committed == store.committed_offsets(GROUP)
        assert sorted(end.values())[-1] > 500 and keda_lag(end, committed, {}, policy).total == 0

        (worker,) = [p for p in psutil.Process(up.process.pid).children(recursive=True)
                     if "worker" in p.cmdline()]  # fmt: skip
        worker.suspend()
        try:
            post_clicks(client, [f"key-{n}" for n in range(40)], 2_000)

            def both() -> tuple[dict[int, int], dict[int, int]] | None:
                # A commit's markers reach the partitions just after it returns.
                end, committed = what_keda_reads(kafka_bootstrap, GROUP, "clicks")
                keda = {p: end[p] - committed[p] for p in end}
                shown = lag_metrics(client, GROUP)
                return (keda, shown) if keda == shown else None

            keda, _ = wait_until(both, 10, "/metrics shows the lag KEDA computes")
            assert sum(keda.values()) > 2_000
            end, committed = what_keda_reads(kafka_bootstrap, GROUP, "clicks")
            assert keda_lag(end, committed, {}, policy).total == sum(keda.values())
        finally:
            worker.resume()
        up.wait_for_no_lag()
        end, committed = what_keda_reads(kafka_bootstrap, GROUP, "clicks")
        assert committed == store.committed_offsets(GROUP) == end
        store.close()


def test_a_topic_with_another_partition_count_is_a_start_up_error(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    existing = KafkaLog(kafka_bootstrap)
    existing.create_topic("clicks", 3)
    existing.close()
    env = {**os.environ, **clicks_on(kafka_bootstrap, postgres_dsn)}
    for command in (["up"], ["worker"], ["ingest", "--port", str(free_port())]):
        done = subprocess.run(
            [sys.executable, "-m", "kappaflow", *command, "--data-dir", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert (
            "Kafka topic 'clicks' has 3 partitions, the settings say 8" in done.stderr + done.stdout
        )
