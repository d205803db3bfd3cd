"""Key -> partition, identical to Kafka's default partitioner (murmur2 of the key bytes,
made positive, modulo the partition count), so a key lands on the same partition in
the embedded log, in Kafka with ``partitioner=murmur2_random``, and from Java clients."""

from murmurhash2 import murmurhash2

SEED = 0x9747B28C
"""Kafka's seed for ``Utils.murmur2``."""


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: 32-bit murmur2 with Kafka's seed, as a signed int."""
    h = murmurhash2(data, SEED)
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``."""
    return (murmurhash2(key.encode(), SEED) & 0x7FFFFFFF) % partitions
