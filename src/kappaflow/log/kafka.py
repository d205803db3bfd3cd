"""The log on Apache Kafka (confluent-kafka / librdkafka). Each append is one
transaction of a transactional producer (``acks=all``): its records, over every
partition, are served to readers (``read_committed``) once it commits, or never. Records
go to the partition kappaflow's partitioner names, which is Kafka's own default for the
key. A commit leaves a control record after the transaction's records in each
partition; reads step over them, so a reader's next offset reaches the partition's end.
Workers read the partitions they own by offset and copy their progress into the
consumer group's committed offsets after each store commit, so KEDA's Kafka scaler and
Kafka's tools see the true lag. Retention is Kafka's.

Client settings (security protocol, SASL, TLS, ...) pass through from
``KAPPAFLOW_KAFKA_CLIENT_CONFIG`` (``key=value`` items)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any

from kappaflow.errors import LogError, LogUnavailable, MissingExtra, OffsetOutOfRange
from kappaflow.log.base import RecordBatch

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
except ModuleNotFoundError as missing:
    raise MissingExtra("the Kafka log (KAPPAFLOW_LOG=kafka)", "kafka") from missing

log = logging.getLogger("kappaflow.log")
TIMEOUT_S = 10.0
TRANSACTION_TIMEOUT_MS = 10_000
"""How long the cluster keeps a transaction open before aborting it itself: a process
that dies mid-append holds back ``read_committed`` readers of its partitions that long."""
COMMIT_TIMEOUT_S = 30.0
"""How long a commit is retried while its errors are retriable (a leader moving)."""
SETTLE_TIMEOUT_S = 120.0
"""How long the outcome of a failed commit is sought while the cluster is unreachable."""
REPOSITION_S = 1.0
"""How long the consumer may take to apply an assignment or a seek (well under 1 ms)."""


class KafkaLog:
    def __init__(self, bootstrap_servers: str, client_config: Mapping[str, str] | None = None):
        self.config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            **(client_config or {}),
        }
        self._producer: Producer | None = None
        self.transactional_id = f"kappaflow-{uuid.uuid4().hex}"
        """One per log, kept by the producers it makes: a new one fences the last and
        aborts the transaction it left open."""
        self._consumer: Consumer | None = None
        self._admin: AdminClient | None = None
        self._clients_lock = threading.Lock()
        """Held while a client that threads share is made."""
        self._position: dict[tuple[str, int], int] = {}
        self._buffered: dict[tuple[str, int], list[Any]] = {}
        self._repositioned_at: dict[tuple[str, int], int] = {}
        """The consumer's position of each partition once it was last assigned or sought
        (see `_reposition`)."""
        self._acknowledgers: dict[str, Consumer] = {}
        self._member, self._group = False, ""
        """Set once `join` made the reading consumer a member of consumer group ``_group``."""

    # -- topics ----------------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int, forever: bool = False) -> None:
        """Create the topic with the cluster's default replication (and retention, unless
        ``forever``), or check that the one there has ``partitions``; wait until the
        cluster's metadata shows it."""
        existing = self._partition_count(topic)
        if existing is None:
            config = {"retention.ms": "-1", "retention.bytes": "-1"} if forever else {}
            futures = self._admin_handle().create_topics(
                [NewTopic(topic, partitions, config=config)], request_timeout=TIMEOUT_S
            )
            try:
                futures[topic].result()
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else: a race
                    raise LogUnavailable(
                        f"Kafka: cannot create topic {topic!r}: {error.args[0].str()}"
                    ) from error
            deadline = time.monotonic() + TIMEOUT_S
            while (existing := self._partition_count(topic)) is None:
                if time.monotonic() > deadline:
                    raise LogUnavailable(f"Kafka: topic {topic!r} was created but is not "
                                         f"in the metadata after {TIMEOUT_S:g} s")  # fmt: skip
                time.sleep(0.05)
        if existing != partitions:
            raise LogError(
                f"Kafka topic {topic!r} has {existing} partitions, the settings say "
                f"{partitions}: set KAPPAFLOW_PARTITIONS={existing} to use the topic as it "
                "is, or delete it so that kappaflow creates it again"
            )

    def _admin_handle(self) -> AdminClient:
        """The one admin client, which threads share (the HTTP server reads offsets in
        threads): a second one made by a race would be collected with requests in
        flight."""
        with self._clients_lock:
            if self._admin is None:
                self._admin = AdminClient(self.config)
            return self._admin

    def _partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic``, None if the cluster has no such topic. All topics are
        listed (asking for one by name makes brokers that auto-create topics create it);
        a topic whose metadata has another error (no leader yet) is unavailable."""
        try:
            metadata = self._admin_handle().list_topics(timeout=TIMEOUT_S).topics.get(topic)
        except KafkaException as error:
            raise LogUnavailable(f"Kafka: {error}") from error
        if metadata is None or (
            metadata.error is not None and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            return None
        if metadata.error is not None:
            raise LogUnavailable(f"Kafka topic {topic!r}: {metadata.error.str()}")
        return len(metadata.partitions)

    def partitions(self, topic: str) -> int:
        found = self._partition_count(topic)
        if found is None:
            raise LogError(f"Kafka topic {topic!r} does not exist")
        return found

    # -- appending -------------------------------------------------------------------

    def _producer_handle(self) -> Producer:
        if self._producer is None:
            producer = Producer(
                {"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS, **self.config,
                 "transactional.id": self.transactional_id, "acks": "all", "linger.ms": 5}
            )  # fmt: skip
            try:
                producer.init_transactions(TIMEOUT_S)
            except KafkaException as error:
                _discard(producer)
                raise LogUnavailable(f"Kafka: cannot start a producer: {error}") from error
            self._producer = producer
        return self._producer

    def append(self, topic: str, partition: int, values: Sequence[bytes]) -> int:
        return self.append_partitions(topic, {partition: values})[partition]

    def append_partitions(
        self, topic: str, records: Mapping[int, Sequence[bytes]]
    ) -> dict[int, int]:
        """Produce every record in one transaction and commit it, which waits once for
        all delivery reports: one round trip for the partitions together, not one each.
        Returns only once the transaction committed; raises `LogUnavailable` only once
        it is known to be aborted (none of the records is ever served). A commit whose
        outcome is unknown (the cluster failed mid-commit) is retried while that may
        help, then settled by fencing the producer and reading the records back."""
        producer = self._producer_handle()
        offsets: dict[int, int] = {}

        def delivered(error: KafkaError | None, message: Any) -> None:
            if error is None:  # in order within a partition: the first is its first record
                offsets.setdefault(message.partition(), message.offset())

        try:
            producer.begin_transaction()
            for partition, values in records.items():
                for value in values:
                    _produce(producer, topic, partition, value, delivered)
            _commit(producer)
        except KafkaException as error:
            if not self._committed_after_all(producer, error.args[0], topic, offsets):
                total = sum(map(len, records.values()))
                raise LogUnavailable(
                    f"Kafka: {total} records not appended to {topic}: {error.args[0].str()}"
                ) from error
            log.warning("Kafka: a commit that failed (%s) had gone through", error.args[0])
        return {partition: offsets.get(partition, -1) for partition in records}

    def _committed_after_all(
        self, producer: Producer, error: KafkaError, topic: str, offsets: Mapping[int, int]
    ) -> bool:
        """Whether the transaction whose commit failed with ``error`` committed. An
        abortable one is aborted. Otherwise the producer is dropped, and a new one with
        the same transactional id fences it and ends its transaction (committed if the
        commit had reached the coordinator, else aborted); its first record, read back,
        tells which. Tries for `SETTLE_TIMEOUT_S` while the cluster is unreachable."""
        if error.txn_requires_abort():
            try:
                producer.abort_transaction(TIMEOUT_S)
                return False
            except KafkaException as failure:
                log.warning("Kafka: could not abort a transaction (%s); fencing it", failure)
        self._producer = None
        _discard(producer)
        if not offsets:  # a commit goes out only once every record was delivered
            return False
        partition, offset = next(iter(offsets.items()))
        deadline, delay = time.monotonic() + SETTLE_TIMEOUT_S, 0.1
        while True:
            try:
                self._producer_handle()
                return self._committed_at(topic, partition, offset)
            except LogUnavailable as failure:
                if time.monotonic() > deadline:
                    log.error("Kafka: a transaction's outcome is unknown after %g s (%s): "
                              "its records may be served", SETTLE_TIMEOUT_S, failure)  # fmt: skip
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _committed_at(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the record at ``offset`` is served to ``read_committed`` readers, once
        every transaction before it ended (aborted records are stepped over)."""
        reader = Consumer(
            {**self.config, "group.id": "kappaflow-reader", "enable.auto.commit": False,
             "auto.offset.reset": "error", "isolation.level": "read_committed"}
        )  # fmt: skip
        try:
            reader.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + TRANSACTION_TIMEOUT_MS / 1000 + TIMEOUT_S
            while time.monotonic() < deadline:
                for message in reader.consume(1, timeout=0.2):
                    if message.error():
                        raise LogUnavailable(f"Kafka: {message.error()}")
                    return message.offset() == offset
                (position,) = reader.position([TopicPartition(topic, partition)])
                if position.offset > offset:
                    return False
            raise LogUnavailable(f"Kafka: {topic}[{partition}] not readable at {offset}")
        finally:
            reader.close()

    # -- reading ---------------------------------------------------------------------

    def _consumer_handle(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {**self.config, "group.id": "kappaflow-reader", "enable.auto.commit": False,
                 "enable.partition.eof": False, "auto.offset.reset": "error",
                 "isolation.level": "read_committed"}
            )  # fmt: skip
        return self._consumer

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> RecordBatch:
        key = (topic, partition)
        if self._position.get(key) != offset:
            if self._member:
                self._seek(topic, partition, offset)
            else:
                self._assign(topic, partition, offset)
        buffered = self._buffered.setdefault(key, [])
        if not buffered and not self._member:
            self._fill(max_records)
        taken, self._buffered[key] = buffered[:max_records], buffered[max_records:]
        next_offset = taken[-1].offset() + 1 if taken else offset
        if not self._buffered[key]:  # all read: step over the control records after them
            next_offset = max(next_offset, self._consumed_through(key))
        self._position[key] = next_offset
        return RecordBatch([m.offset() for m in taken], [m.value() for m in taken], next_offset)

    def _consumed_through(self, key: tuple[str, int]) -> int:
        """Where the consumer has read the partition up to, control records included;
        below 0 while it has not read on since it was repositioned."""
        (found,) = self._consumer_handle().position([TopicPartition(*key)])
        return found.offset if found.offset != self._repositioned_at.get(key) else -1

    def _reposition(self, keys: list[tuple[str, int]], move: Callable[[], None]) -> None:
        """Run ``move``, an assignment or a seek of ``keys``, and wait until the consumer
        applied it. Until then (librdkafka applies it in its own thread) its position
        is the one from before, which it may reach again after the move: taken then for
        having read on, that would leave it short of the control records it steps over
        again, for good. Past `REPOSITION_S` the old position is noted, and only a
        position other than it is taken for having read on."""
        consumer = self._consumer_handle()
        partitions = [TopicPartition(*key) for key in keys]
        try:
            before = [tp.offset for tp in consumer.position(partitions)]
            move()
            deadline = time.monotonic() + REPOSITION_S
            while True:
                found = consumer.position(partitions)
                pairs = zip(found, before, strict=True)
                moved = all(tp.offset < 0 or tp.offset != was for tp, was in pairs)
                if moved or time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
        except KafkaException as error:
            raise LogUnavailable(f"Kafka: {error}") from error
        self._repositioned_at.update(((tp.topic, tp.partition), tp.offset) for tp in found)

    def _assign(self, topic: str, partition: int, offset: int) -> None:
        """Fetch ``partition`` from ``offset``; the other partitions go on fetching after
        what is already buffered for them."""
        consumer = self._consumer_handle()
        wanted = {}
        for key, position in self._position.items():
            buffered = self._buffered.get(key)
            wanted[key] = buffered[-1].offset() + 1 if buffered else position
        wanted[topic, partition] = offset
        chosen = [TopicPartition(t, p, o) for (t, p), o in wanted.items()]
        self._reposition(list(wanted), partial(consumer.assign, chosen))
        self._position[topic, partition] = offset
        self._buffered[topic, partition] = []

    # -- consumer-group membership -----------------------------------------------------

    def join(
        self,
        topic: str,
        group: str,
        assigned: Callable[[list[int]], Mapping[int, int]],
        revoked: Callable[[list[int]], None],
    ) -> None:
        """Become a member of ``group`` (cooperative-sticky assignment). On assignment,
        ``assigned(partitions)`` returns where to start each one (from the store); on
        revocation, ``revoked(partitions)`` is told. Both run inside `rebalance`, which
        the worker calls between batches, so nothing is in flight when they do."""
        if self._consumer is not None:
            self._consumer.close()
        self._position, self._buffered, self._repositioned_at = {}, {}, {}
        self._consumer = Consumer(
            {**self.config, "group.id": group, "enable.auto.commit": False,
             "partition.assignment.strategy": "cooperative-sticky",
             "auto.offset.reset": "earliest", "enable.partition.eof": False,
             "isolation.level": "read_committed"}
        )  # fmt: skip
        self._member, self._group = True, group

        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            starts = assigned([tp.partition for tp in partitions])
            chosen = [TopicPartition(topic, p, o) for p, o in starts.items()]
            moved = partial(consumer.incremental_assign, chosen)
            self._reposition([(topic, tp.partition) for tp in chosen], moved)
            for tp in chosen:
                self._position[topic, tp.partition] = tp.offset
                self._buffered[topic, tp.partition] = []

        def on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            revoked([tp.partition for tp in partitions])
            consumer.incremental_unassign(partitions)
            for tp in partitions:
                self._position.pop((topic, tp.partition), None)
                self._buffered.pop((topic, tp.partition), None)

        self._consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke,
                                 on_lost=on_revoke)  # fmt: skip

    def rebalance(self, max_records: int) -> None:
        """Take part in the group (assignments happen here) and fetch what is ready."""
        self._fill(max_records)

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        seek = partial(self._consumer_handle().seek, TopicPartition(topic, partition, offset))
        self._reposition([(topic, partition)], seek)
        self._position[topic, partition] = offset
        self._buffered[topic, partition] = []

    def _fill(self, max_records: int) -> None:
        try:
            messages = self._consumer_handle().consume(max_records, timeout=0.05)
        except KafkaException as error:
            raise LogUnavailable(f"Kafka: {error}") from error
        failure: LogError | None = None
        for message in messages:
            key = (message.topic(), message.partition())
            if (error := message.error()) is None:
                self._buffered.setdefault(key, []).append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                # The consumer may have stopped fetching the partition: the next read of
                # it repositions it, from where the reader asks.
                self._position.pop(key, None)
                self._buffered.pop(key, None)
                if failure is None:
                    reset = error.code() == KafkaError._AUTO_OFFSET_RESET
                    failure = (OffsetOutOfRange if reset else LogUnavailable)(f"Kafka: {error}")
        if failure is not None:  # raised once every record fetched with it is kept
            raise failure

    # -- offsets ---------------------------------------------------------------------

    def _list_offsets(self, topic: str, spec: OffsetSpec) -> dict[int, int]:
        """One ListOffsets request for every partition of ``topic`` (librdkafka sends it
        to each partition's leader at once)."""
        wanted = {TopicPartition(topic, p): spec for p in range(self.partitions(topic))}
        futures = self._admin_handle().list_offsets(wanted, request_timeout=TIMEOUT_S)
        try:
            return {tp.partition: future.result().offset for tp, future in futures.items()}
        except KafkaException as error:
            raise LogUnavailable(f"Kafka: offsets of {topic}: {error.args[0].str()}") from error

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self._list_offsets(topic, OffsetSpec.latest())

    def start_offsets(self, topic: str) -> dict[int, int]:
        return self._list_offsets(topic, OffsetSpec.earliest())

    def acknowledge(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Commit the group's offsets: through the member consumer when the group assigns
        the partitions, else through a consumer that only commits. A failure is logged,
        not raised: this is a copy for tools, and the next commit brings it up to date."""
        if self._member and self._group == group:
            consumer = self._consumer_handle()
        else:
            consumer = self._group_handle(group)
        try:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as error:
            log.warning("Kafka: could not copy %s's offsets to the group: %s", group, error)

    def acknowledged(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offsets (what KEDA reads), fetched by a consumer of the
        group that never joins it. (The admin API's ListConsumerGroupOffsets crashed the
        process while the group coordinator was loading, in confluent-kafka 2.16.)"""
        wanted = [TopicPartition(topic, p) for p in range(self.partitions(topic))]
        try:
            found = self._group_handle(group).committed(wanted, timeout=TIMEOUT_S)
        except KafkaException as error:
            message = error.args[0].str()
            raise LogUnavailable(f"Kafka: offsets of group {group}: {message}") from error
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    def _group_handle(self, group: str) -> Consumer:
        """A consumer of ``group`` that only commits and reads its offsets."""
        with self._clients_lock:
            if group not in self._acknowledgers:
                config = {**self.config, "group.id": group, "enable.auto.commit": False}
                self._acknowledgers[group] = Consumer(config)
            return self._acknowledgers[group]

    def apply_retention(
        self, topic: str, groups: Collection[str], max_bytes: int, max_age_s: float
    ) -> int:
        """Nothing: the brokers apply the topic's retention (``retention.ms``,
        ``retention.bytes``), whatever the consumer groups have read."""
        return 0

    def close(self) -> None:
        """Close every client (librdkafka's threads and connections end with them) and
        forget what was read; a later call opens new clients (a group member joins
        again)."""
        if self._producer is not None:
            self._producer.close()  # every append ended its transaction: nothing is queued
        for consumer in [self._consumer, *self._acknowledgers.values()]:
            if consumer is not None:
                consumer.close()
        self._producer, self._admin, self._consumer, self._acknowledgers = None, None, None, {}
        self._position, self._buffered, self._repositioned_at = {}, {}, {}
        self._member, self._group = False, ""


def _commit(producer: Producer) -> None:
    """Commit the open transaction, again while the error is retriable (a timeout while
    partition leaders move), for at most `COMMIT_TIMEOUT_S`."""
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while True:
        try:
            producer.commit_transaction(TIMEOUT_S)
            return
        except KafkaException as error:
            if not error.args[0].retriable() or time.monotonic() > deadline:
                raise


def _discard(producer: Producer) -> None:
    """End a producer that cannot go on (its threads would keep connecting while the
    object lives): its queued records are dropped, unsent."""
    producer.purge()
    with warnings.catch_warnings(), suppress(KafkaException):  # nor end its transaction
        warnings.simplefilter("ignore", RuntimeWarning)
        producer.close()


def _produce(
    producer: Producer, topic: str, partition: int, value: bytes, on_delivery: Any
) -> None:
    """Produce one record; when the producer's queue is full, empty it and go on."""
    try:
        producer.produce(topic, value, partition=partition, on_delivery=on_delivery)
    except BufferError:
        if producer.flush(TIMEOUT_S):
            reason = f"the producer's queue stayed full for {TIMEOUT_S:g} s"
            raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, reason)) from None
        producer.produce(topic, value, partition=partition, on_delivery=on_delivery)
