"""Keys land on the same partition as with Kafka's default partitioner."""

from __future__ import annotations

import random

import pytest

from kappaflow.log.partitioner import murmur2, partition_for, partitions_for


# Vectors from Kafka's UtilsTest.testMurmur2 (clients/src/test/.../utils/UtilsTest.java).
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_positive_hash_modulo_partitions() -> None:
    for key in ("user-1", "user-2", "é-unicode", ""):
        expected = (murmur2(key.encode()) & 0x7FFFFFFF) % 8
        assert partition_for(key, 8) == expected
        assert 0 <= partition_for(key, 3) < 3


def test_keys_spread_over_partitions() -> None:
    counts = [0] * 8
    for n in range(8_000):
        counts[partition_for(f"user-{n}", 8)] += 1
    assert min(counts) > 800, counts


def test_partitions_of_many_keys_at_once_are_each_keys_partition() -> None:
    rng = random.Random(3)
    alphabet = "abcXYZ019-_\x00\x7fé€\U0001f600"
    keys = ["".join(rng.choices(alphabet, k=rng.randrange(41))) for _ in range(5_000)]
    keys += [f"user-{n}-1" for n in range(1_000)] + ["", "a", "ab", "abc", "abcd"]
    for partitions in (1, 3, 8, 100):
        assert partitions_for(keys, partitions) == [partition_for(k, partitions) for k in keys]
    assert partitions_for([], 8) == []
