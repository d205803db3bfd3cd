"""Key -> partition, identical to Kafka's default partitioner (murmur2 of the key bytes,
made positive, modulo the partition count), so a key lands on the same partition in
the embedded log, in Kafka with ``partitioner=murmur2_random``, and from Java clients."""

from collections.abc import Sequence

import numpy as np
from murmurhash2 import murmurhash2

SEED = 0x9747B28C
"""Kafka's seed for ``Utils.murmur2``."""
_M = np.uint32(0x5BD1E995)


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: 32-bit murmur2 with Kafka's seed, as a signed int."""
    h = murmurhash2(data, SEED)
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``."""
    return (murmurhash2(key.encode(), SEED) & 0x7FFFFFFF) % partitions


def partitions_for(keys: Sequence[str], partitions: int) -> list[int]:
    """`partition_for` of each of ``keys``, with murmur2 computed on all of them at once
    over arrays of their 4-byte words: the call into the extension per key costs more
    than the hash."""
    data = [key.encode() for key in keys]
    lengths = np.fromiter(map(len, data), np.uint32, len(data))
    words = -(-int(lengths.max(initial=0)) // 4) or 1
    block = np.array(data, f"S{4 * words}").view("<u4").reshape(len(data), words)
    h = np.uint32(SEED) ^ lengths
    whole = lengths // 4
    for j in range(words):  # the whole words of each key, little-endian
        k = block[:, j] * _M
        k ^= k >> 24
        k *= _M
        h = np.where(j < whole, (h * _M) ^ k, h)
    # The 1-3 bytes left, as one little-endian number: the next word, padded with zeros.
    tail = block[np.arange(len(data)), np.minimum(whole, words - 1)]
    h = np.where(lengths % 4 > 0, (h ^ tail) * _M, h)
    h ^= h >> 13
    h *= _M
    h ^= h >> 15
    return ((h & 0x7FFFFFFF) % partitions).tolist()
