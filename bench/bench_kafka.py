"""Ingest's group commit on the Kafka log, against a real Apache Kafka broker on
loopback (tools/kafka/libs, or ``KAFKA_LIBS``): the records of one group commit, spread
over 8 partitions, appended in one transaction for all the partitions (as ingest
appends) against one transaction per partition. With ``acks=all`` across brokers each
commit costs more round trips than on one, so the gap there is wider."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from common import KAFKA_LIBS, START_MS, Figure
from rich.console import Console

from kappaflow.apps.video.app import Heartbeat, create_app
from kappaflow.apps.video.sim import heartbeats
from kappaflow.ingest.appender import Appender
from kappaflow.log.kafka import KafkaLog
from kappaflow.settings import Settings
from kappaflow.testing.kafka import kafka_cluster, kafka_libs

PARTITIONS = 8
PER_COMMIT = 2_000
"""Events of one group commit: one request of the load generator's."""
SECONDS = 5
console = Console()


def run(scale: float) -> list[Figure]:
    events = list(itertools.islice(heartbeats(10_000, 0, START_MS), PER_COMMIT))
    seconds = max(1.0, SECONDS * scale)
    with kafka_cluster(kafka_libs(KAFKA_LIBS), heap="1g", java_options=()) as cluster:
        # The log's clients go with it when `_measure` returns, before the cluster does.
        log = KafkaLog(cluster.bootstrap_servers)
        together, apart = _measure(log, events, seconds)
    for name, rate in (("one transaction", together), ("a transaction per partition", apart)):
        console.print(f"Kafka broker, {name}: {rate:,.0f} events/s")
    return [Figure(f"Kafka append, {PER_COMMIT:,} events over {PARTITIONS} partitions",
                   together, "events/s", "a transaction per partition", apart)]  # fmt: skip


def _measure(log: KafkaLog, events: list[Heartbeat], seconds: float) -> tuple[float, float]:
    """Events/s appended in one transaction for all partitions, and in one for each."""
    stream = create_app(Settings.load({})).streams[0]
    records = Appender(log, stream, PARTITIONS).encode(events)  # as ingest encodes them
    log.create_topic("heartbeats", PARTITIONS)
    log.append_partitions("heartbeats", records)  # the producer connects
    together = _rate(lambda: log.append_partitions("heartbeats", records), seconds)
    apart = _rate(lambda: [log.append("heartbeats", p, v) for p, v in records.items()], seconds)
    log.close()
    return together, apart


def _rate(append: Callable[[], object], seconds: float) -> float:
    """Events per second that ``append`` (one group commit a call) appends over about
    ``seconds``."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        append()
        count += 1
    return count * PER_COMMIT / (time.perf_counter() - started)
