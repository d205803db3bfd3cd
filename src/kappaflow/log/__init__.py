"""The durable, partitioned log. `open_log` is the one place that names a backend."""

from __future__ import annotations

from kappaflow.log.base import Log, RecordBatch
from kappaflow.log.partitioner import partition_for
from kappaflow.settings import Settings

__all__ = ["Log", "RecordBatch", "open_log", "partition_for"]


def open_log(settings: Settings, *, writer: bool = False) -> Log:
    """The log the settings name; ``writer=True`` in the one process that appends
    (the embedded log's rule; Kafka takes many writers)."""
    if settings.log == "kafka":
        from kappaflow.log.kafka import KafkaLog

        options = dict(item.split("=", 1) for item in settings.kafka_client_config)
        return KafkaLog(settings.kafka_bootstrap_servers, options)
    from kappaflow.log.embedded import EmbeddedLog

    return EmbeddedLog(
        settings.log_path,
        writer=writer,
        fsync=settings.log_fsync,
        segment_bytes=settings.log_segment_bytes,
    )
