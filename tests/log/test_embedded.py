from __future__ import annotations

import errno
import multiprocessing
import os
import struct
import zlib
from pathlib import Path

import pytest

from kappaflow.errors import LogCorrupted, LogError, LogUnavailable, OffsetOutOfRange
from kappaflow.log.embedded import BATCH, RECORD, EmbeddedLog, check_unwritten, writer_pid
from kappaflow.testing import limit_file_size, run_in_process


def values(start: int, count: int) -> list[bytes]:
    return [f'{{"n": {n}}}'.encode() for n in range(start, start + count)]


@pytest.fixture
def log(tmp_path: Path):
    log = EmbeddedLog(tmp_path / "log", writer=True, segment_bytes=4096)
    log.create_topic("t", 3)
    yield log
    log.close()


def test_append_returns_offsets_and_reads_back(log: EmbeddedLog) -> None:
    assert log.append("t", 0, values(0, 5)) == 0
    assert log.append("t", 0, values(5, 3)) == 5
    assert log.append("t", 1, values(0, 1)) == 0
    batch = log.read("t", 0, 2, 100)
    assert batch.offsets == list(range(2, 8))
    assert batch.values == values(2, 6)
    assert batch.next_offset == 8
    assert log.end_offsets("t") == {0: 8, 1: 1, 2: 0}
    assert log.read("t", 2, 0, 10).values == []
    assert log.append_partitions("t", {0: values(8, 2), 2: values(0, 3)}) == {0: 8, 2: 0}
    assert log.end_offsets("t") == {0: 10, 1: 1, 2: 3}
    assert log.read("t", 2, 0, 100).values == values(0, 3)


def test_read_spans_rolled_segments(log: EmbeddedLog) -> None:
    for start in range(0, 2000, 100):
        log.append("t", 0, values(start, 100))
    segments = sorted((log.root / "t" / "0").glob("*.batches"))
    assert len(segments) > 3
    seen: list[bytes] = []
    offset = 0
    while offset < 2000:
        batch = log.read("t", 0, offset, 137)
        assert batch.offsets[0] == offset
        seen.extend(batch.values)
        offset = batch.next_offset
    assert seen == values(0, 2000)


def test_reader_in_other_instance_sees_appends(log: EmbeddedLog, tmp_path: Path) -> None:
    reader = EmbeddedLog(tmp_path / "log")
    assert reader.end_offsets("t")[0] == 0
    log.append("t", 0, values(0, 10))
    assert reader.end_offsets("t")[0] == 10
    assert reader.read("t", 0, 7, 10).values == values(7, 3)
    with pytest.raises(LogError, match="opened for reading"):
        reader.append("t", 0, values(0, 1))


def test_second_writer_is_refused_naming_the_first(log: EmbeddedLog, tmp_path: Path) -> None:
    said = rf"another process \(pid {os.getpid()}\) is writing to the log at {tmp_path}/log"
    with pytest.raises(LogUnavailable, match=said):
        EmbeddedLog(tmp_path / "log", writer=True)
    with pytest.raises(LogUnavailable, match=said):
        check_unwritten(tmp_path / "log")
    assert writer_pid(tmp_path / "log") == os.getpid()
    log.close()
    assert writer_pid(tmp_path / "log") is None
    check_unwritten(tmp_path / "log")


def test_acknowledged_offsets_are_kept_per_group_for_readers(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    """Workers of one group, each in a process of its own (a log instance here), note
    their own partitions; other groups and readers see what each group noted last."""
    first, second = EmbeddedLog(tmp_path / "log"), EmbeddedLog(tmp_path / "log")
    assert log.acknowledged("g", "t") == {}
    first.acknowledge("g", "t", {0: 5, 2: 7})
    second.acknowledge("g", "t", {1: 3})
    first.acknowledge("g", "t", {0: 9})
    second.acknowledge("other", "t", {0: 1})
    assert log.acknowledged("g", "t") == {0: 9, 1: 3, 2: 7}
    assert log.acknowledged("other", "t") == {0: 1}
    (log.root / "t" / "groups" / "g.json").write_bytes(b"")  # torn by a power loss
    assert log.acknowledged("g", "t") == {}


def test_topic_partition_count_cannot_change(log: EmbeddedLog) -> None:
    log.create_topic("t", 3)
    with pytest.raises(LogError, match="has 3 partitions, not 5"):
        log.create_topic("t", 5)
    with pytest.raises(LogError, match="no partition 3"):
        log.append("t", 3, values(0, 1))
    with pytest.raises(LogError, match="does not exist"):
        log.read("missing", 0, 0, 1)


def test_torn_tail_is_never_served_and_cut_on_open(tmp_path: Path) -> None:
    root = tmp_path / "log"
    log = EmbeddedLog(root, writer=True)
    log.create_topic("t", 1)
    log.append("t", 0, values(0, 4))
    log.close()
    segment = root / "t" / "0" / f"{0:020d}.batches"
    whole = batch(values(4, 2))
    torn = batch(values(6, 3))[:-5]  # a crash in the middle of a batch
    with segment.open("ab") as file:  # batches written but never indexed, then torn
        file.write(whole + torn)
    reader = EmbeddedLog(root)
    assert reader.read("t", 0, 0, 100).values == values(0, 4), "unindexed tail served"

    log = EmbeddedLog(root, writer=True)
    assert log.append("t", 0, values(100, 1)) == 6, "whole records kept, torn one cut"
    assert reader.read("t", 0, 0, 100).values == [*values(0, 6), *values(100, 1)]
    log.close()


def batch(records: list[bytes]) -> bytes:
    """A record batch as a segment holds it, written here by hand."""
    body = b"".join([*(struct.pack("<I", len(r)) for r in records), *records])
    return BATCH.pack(len(records), len(body), zlib.crc32(body)) + body


def test_one_batch_per_append_read_from_any_offset_inside_it(log: EmbeddedLog) -> None:
    log.append("t", 0, values(0, 4))
    log.append("t", 0, [b"", b"x" * 3000, b"y"])
    segment = log.root / "t" / "0" / f"{0:020d}.batches"
    assert segment.read_bytes() == batch(values(0, 4)) + batch([b"", b"x" * 3000, b"y"])
    for offset in range(7):
        for limit in (1, 2, 5):
            expected = [*values(0, 4), b"", b"x" * 3000, b"y"][offset : offset + limit]
            assert log.read("t", 0, offset, limit).values == expected
    assert log.append("t", 0, []) == 7, "an empty append writes nothing"
    assert log.end_offsets("t")[0] == 7


def test_corrupt_record_inside_durable_log_raises(log: EmbeddedLog) -> None:
    log.append("t", 0, values(0, 3))
    log.append("t", 0, values(3, 3))
    segment = log.root / "t" / "0" / f"{0:020d}.batches"
    data = bytearray(segment.read_bytes())
    data[len(data) - 2] ^= 0xFF  # in the last record of the second batch
    segment.write_bytes(bytes(data))
    assert log.read("t", 0, 0, 3).values == values(0, 3)
    with pytest.raises(LogCorrupted, match="fails its checksum"):
        log.read("t", 0, 0, 10)
    with pytest.raises(LogCorrupted, match="fails its checksum"):
        log.read("t", 0, 4, 1)


def test_segments_of_kappaflow_0_1_are_read_and_continued_in_batches(tmp_path: Path) -> None:
    """Before record batches, each record had its own frame and checksum."""
    root = tmp_path / "log"
    EmbeddedLog(root).create_topic("t", 2)
    old = values(0, 5)
    frames = [RECORD.pack(len(v), zlib.crc32(v)) + v for v in old]
    path = root / "t" / "0"
    (path / f"{0:020d}.log").write_bytes(b"".join(frames) + RECORD.pack(50, 0) + b"{")
    (path / f"{0:020d}.index").write_bytes(struct.pack("<QQ", 3, sum(map(len, frames[:3]))))
    (root / "t" / "1" / f"{0:020d}.log").touch()  # an empty one
    assert EmbeddedLog(root).read("t", 0, 1, 10).values == old[1:3], "only indexed records"

    log = EmbeddedLog(root, writer=True)
    assert log.append("t", 0, values(5, 2)) == 5, "whole records kept, the torn one cut"
    assert log.append("t", 1, values(0, 1)) == 0
    assert sorted(p.name for p in path.iterdir()) == [
        f"{0:020d}.index", f"{0:020d}.log", f"{5:020d}.batches", f"{5:020d}.index"
    ]  # fmt: skip
    assert not (root / "t" / "1" / f"{0:020d}.log").exists()
    assert log.read("t", 0, 0, 100).values == values(0, 5), "a read stays in one segment"
    assert log.read("t", 0, 5, 100).values == values(5, 2)
    assert log.read("t", 1, 0, 100).values == values(0, 1)
    log.acknowledge("g", "t", {0: 7, 1: 1})
    assert log.apply_retention("t", ["g"], max_bytes=1, max_age_s=0) == 1
    assert log.start_offsets("t") == {0: 5, 1: 0}
    log.close()


def test_index_entries_past_the_data_are_dropped_on_open(tmp_path: Path) -> None:
    root = tmp_path / "log"
    log = EmbeddedLog(root, writer=True, fsync="never")
    log.create_topic("t", 1)
    log.append("t", 0, values(0, 3))
    log.close()
    index = root / "t" / "0" / f"{0:020d}.index"
    with index.open("ab") as file:  # an entry pointing past the end, as after power loss
        file.write(struct.pack("<QQ", 50, 10_000))
    log = EmbeddedLog(root, writer=True)
    assert log.end_offsets("t") == {0: 3}
    assert log.append("t", 0, values(3, 1)) == 3
    log.close()


def _write_in_child(root: str, count: int) -> None:
    log = EmbeddedLog(Path(root), writer=True)
    for start in range(0, count, 50):
        log.append("t", 0, values(start, 50))
    log.close()


def test_concurrent_reader_while_another_process_writes(tmp_path: Path) -> None:
    root = tmp_path / "log"
    EmbeddedLog(root).create_topic("t", 1)
    writer = multiprocessing.get_context("spawn").Process(
        target=_write_in_child, args=(str(root), 3000)
    )
    writer.start()
    reader = EmbeddedLog(root)
    seen: list[bytes] = []
    offset = 0
    while offset < 3000:
        batch = reader.read("t", 0, offset, 200)
        seen.extend(batch.values)
        offset = batch.next_offset
        if not batch.values:
            assert writer.is_alive() or offset == reader.end_offsets("t")[0]
    writer.join(30)
    assert writer.exitcode == 0
    assert seen == values(0, 3000)


def test_retention_deletes_only_consumed_old_segments(log: EmbeddedLog) -> None:
    for start in range(0, 1000, 100):
        log.append("t", 0, values(start, 100))
    path = log.root / "t" / "0"
    bases = sorted(int(p.stem) for p in path.glob("*.batches"))
    assert len(bases) >= 4
    # One consumer still needs offsets from bases[2]: nothing at or above it may go, and
    # nothing of a partition another consumer never acknowledged.
    log.acknowledge("slow", "t", {0: bases[2]})
    log.acknowledge("fast", "t", {0: 1000})
    assert log.apply_retention("t", ["fast", "slow", "new"], max_bytes=1, max_age_s=0) == 0
    deleted = log.apply_retention("t", ["fast", "slow"], max_bytes=1, max_age_s=0)
    assert deleted == 2
    assert log.start_offsets("t")[0] == bases[2]
    with pytest.raises(OffsetOutOfRange):
        log.read("t", 0, 0, 10)
    assert log.read("t", 0, bases[2], 1).offsets == [bases[2]]
    # Nothing is over the age limit yet, and no size limit is set.
    assert log.apply_retention("t", ["fast"], max_bytes=0, max_age_s=3600) == 0
    old = os.stat(path / f"{bases[2]:020d}.batches").st_mtime - 7200
    os.utime(path / f"{bases[2]:020d}.batches", (old, old))
    assert log.apply_retention("t", ["fast"], max_bytes=0, max_age_s=3600) == 1


def _append_over_a_size_limit(root: str) -> None:
    """In a process of its own: three partitions served, then an append whose third
    partition goes over the file-size limit (a real EFBIG), then one more."""
    log = EmbeddedLog(Path(root), writer=True)
    log.create_topic("t", 3)
    log.append_partitions("t", {p: values(0, 10) for p in range(3)})
    limit_file_size(20_000)
    big = [b"x" * 1_000] * 30
    with pytest.raises(LogUnavailable, match="cannot append"):
        log.append_partitions("t", {0: values(10, 5), 1: values(10, 5), 2: big})
    assert log.append_partitions("t", {0: values(100, 2), 2: values(100, 2)}) == {0: 10, 2: 10}
    log.close()


def test_an_append_of_several_partitions_is_served_all_or_nothing(tmp_path: Path) -> None:
    run_in_process(_append_over_a_size_limit, str(tmp_path / "log"))
    reader = EmbeddedLog(tmp_path / "log")
    served = {p: reader.read("t", p, 0, 1_000).values for p in range(3)}
    assert served == {0: values(0, 10) + values(100, 2), 1: values(0, 10),
                      2: values(0, 10) + values(100, 2)}  # fmt: skip


def test_a_failed_index_entry_serves_no_later_partition(log: EmbeddedLog) -> None:
    # A write of 16 bytes failing after the batches were written cannot be produced for
    # real here: the index file of partition 1 stands in for a disk that refuses it.
    log.append_partitions("t", {p: values(0, 3) for p in range(3)})
    writer = log._writer("t", 1)

    class Refusing:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            index.close()

    index, writer.index = writer.index, Refusing()
    with pytest.raises(LogUnavailable, match="No space left"):
        log.append_partitions("t", {p: values(10, 2) for p in range(3)})
    log.append_partitions("t", {p: values(20, 1) for p in range(3)})
    reader = EmbeddedLog(log.root)
    served = {p: reader.read("t", p, 0, 100).values for p in range(3)}
    assert served[0] == values(0, 3) + values(10, 2) + values(20, 1)  # published before
    assert served[1] == values(0, 3) + values(20, 1)
    assert served[2] == values(0, 3) + values(20, 1)


def test_a_failed_fsync_serves_no_partition_of_the_append(
    log: EmbeddedLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An fsync that fails (EIO from a dying disk) cannot be produced for real here:
    # fdatasync of partition 1's data file stands in for one, while the fsyncs of the
    # other partitions run at the same time and succeed.
    log.append_partitions("t", {p: values(0, 3) for p in range(3)})
    failing = log._writer("t", 1).data.fileno()
    real = os.fdatasync
    synced: list[int] = []

    def fdatasync(fd: int) -> None:
        if fd == failing:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with pytest.raises(LogUnavailable, match="Input/output error"):
        log.append_partitions("t", {p: values(10, 2) for p in range(3)})
    assert len(synced) == 2  # the others' fsyncs all ran before any batch was cut
    monkeypatch.setattr(os, "fdatasync", real)
    assert log.append_partitions("t", {p: values(20, 1) for p in range(3)}) == {
        p: 3 for p in range(3)
    }
    reader = EmbeddedLog(log.root)
    served = {p: reader.read("t", p, 0, 100).values for p in range(3)}
    assert served == {p: values(0, 3) + values(20, 1) for p in range(3)}
