"""The embedded log: segment files on local disk, one writer process, many readers.

Layout: ``<root>/<topic>/topic.json`` and, per partition, ``<root>/<topic>/<p>/``
holding segments ``<base offset>.batches`` with their ``<base offset>.index``; the
offsets each consumer group acknowledged in ``<root>/<topic>/groups/<group>.json``; the
writer's lock ``<root>/writer.lock``, holding its pid.

A segment is a sequence of record batches, one per append: ``[u32 count][u32 body
length][u32 crc32 of the body]``, then the body: ``count`` u32 record lengths and the
records. After every append the writer makes the batch durable (fsync, unless relaxed)
and only then adds an index entry ``[u64 next offset][u64 byte position]``. Readers
serve records up to the last index entry only, so they never see a record that is not
durable, nor a tail torn by a crash. On open, the writer verifies the batches after the
last index entry, cuts a torn tail back to the last whole batch and indexes what
survives.

Segments named ``<base offset>.log`` hold records of kappaflow 0.1, each framed as
``[u32 length][u32 crc32][value]``; they are read as they are, and a writer that finds
one active continues in a new segment.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import itertools
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO, Literal

from kappaflow.errors import LogCorrupted, LogError, LogUnavailable, OffsetOutOfRange
from kappaflow.log.base import RecordBatch

log = logging.getLogger("kappaflow.log")
BATCH = struct.Struct("<III")
RECORD = struct.Struct("<II")
"""A record's frame in a segment of kappaflow 0.1."""
ENTRY = struct.Struct("<QQ")
BATCHES, RECORDS = ".batches", ".log"
SYNC_THREADS = 32
"""Most fsyncs of one append at once (a thread is started only when none is idle)."""
_EMPTY = b""
WRITER_LOCK = "writer.lock"


def _segment_name(base: int, suffix: str) -> str:
    return f"{base:020d}{suffix}"


def _segments(path: Path) -> dict[int, str]:
    """Base offset -> data file suffix of each segment in a partition directory,
    sorted by base."""
    found = {}
    for name in os.listdir(path):
        base, dot, suffix = name.partition(".")
        if dot + suffix in (BATCHES, RECORDS):
            found[int(base)] = dot + suffix
    return dict(sorted(found.items()))


class _Index:
    """The index entries of one segment, loaded incrementally as the file grows."""

    def __init__(self, path: Path, base: int) -> None:
        self.path = path
        self.base = base
        self.offsets: list[int] = []
        self.positions: list[int] = []
        self._loaded_bytes = 0

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as file:
                file.seek(self._loaded_bytes)
                data = file.read()
        except FileNotFoundError:
            return
        whole = len(data) - len(data) % ENTRY.size
        for next_offset, position in ENTRY.iter_unpack(data[:whole]):
            self.offsets.append(next_offset)
            self.positions.append(position)
        self._loaded_bytes += whole

    @property
    def end(self) -> int:
        return self.offsets[-1] if self.offsets else self.base

    def start_of(self, offset: int) -> tuple[int, int]:
        """The last indexed (offset, position) at or before ``offset``."""
        i = bisect.bisect_right(self.offsets, offset) - 1
        return (self.offsets[i], self.positions[i]) if i >= 0 else (self.base, 0)

    def position_after(self, offset: int) -> int:
        """Byte position of the first indexed boundary at or after ``offset``."""
        i = bisect.bisect_left(self.offsets, offset)
        return self.positions[min(i, len(self.positions) - 1)]


class _Partition:
    """A reader's view of one partition directory. Callers hold ``lock``: a process
    reads from several threads (ingest's backlog check beside the dashboard's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.bases: list[int] = []
        self.suffixes: dict[int, str] = {}
        self.indexes: dict[int, _Index] = {}

    def refresh_segments(self) -> None:
        self.suffixes = _segments(self.path)
        bases = self.bases = list(self.suffixes)
        for base in list(self.indexes):
            if base not in bases:
                del self.indexes[base]

    def index(self, base: int) -> _Index:
        if base not in self.indexes:
            self.indexes[base] = _Index(self.path / _segment_name(base, ".index"), base)
        index = self.indexes[base]
        index.refresh()
        return index

    def end(self) -> int:
        self.refresh_segments()
        return self.index(self.bases[-1]).end if self.bases else 0

    def read(self, offset: int, max_records: int) -> RecordBatch:
        if not self.bases or offset >= self.index(self.bases[-1]).end:
            self.refresh_segments()
        if not self.bases:
            return RecordBatch([], [], offset)
        if offset < self.bases[0]:
            raise OffsetOutOfRange(f"{self.path}: offset {offset} was deleted by retention")
        base = self.bases[bisect.bisect_right(self.bases, offset) - 1]
        index = self.index(base)
        if offset >= index.end:
            later = [b for b in self.bases if b > base]
            if later and offset == index.end:
                return self.read_segment(self.index(later[0]), offset, max_records)
            if offset > index.end and base == self.bases[-1]:
                raise OffsetOutOfRange(f"{self.path}: offset {offset} is past the end {index.end}")
            return RecordBatch([], [], offset)
        return self.read_segment(index, offset, max_records)

    def read_segment(self, index: _Index, offset: int, max_records: int) -> RecordBatch:
        first, start = index.start_of(offset)
        stop = index.position_after(min(offset + max_records, index.end))
        suffix = self.suffixes[index.base]
        try:
            with (self.path / _segment_name(index.base, suffix)).open("rb") as file:
                file.seek(start)
                data = file.read(stop - start)
        except FileNotFoundError:
            raise OffsetOutOfRange(f"{self.path}: offset {offset} was deleted") from None
        decode = _decode_batches if suffix == BATCHES else _decode_records
        values = decode(data, skip=offset - first, limit=max_records)
        if values is None:
            raise LogCorrupted(f"{self.path}: a record fails its checksum inside the durable log")
        return RecordBatch(list(range(offset, offset + len(values))), values, offset + len(values))


def _encode_batch(values: Sequence[bytes]) -> bytes:
    body = struct.pack(f"<{len(values)}I", *map(len, values)) + _EMPTY.join(values)
    return BATCH.pack(len(values), len(body), zlib.crc32(body)) + body


def _decode_batches(data: bytes, skip: int, limit: int) -> list[bytes] | None:
    """Up to ``limit`` records of the batches in ``data`` after the first ``skip``
    (the records between the index entry and the offset asked for); None if a batch
    fails its checksum."""
    values: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data) and len(values) < limit:
        count, size, crc = BATCH.unpack_from(data, pos)
        start, pos = pos + BATCH.size, pos + BATCH.size + size
        if skip >= count:
            skip -= count
            continue
        if pos > len(data) or zlib.crc32(view[start:pos]) != crc:
            return None
        lengths = struct.unpack_from(f"<{count}I", data, start)
        ends = list(itertools.accumulate(lengths, initial=start + 4 * count))
        last = min(count, skip + limit - len(values))
        values += [data[a:b] for a, b in itertools.pairwise(ends[skip : last + 1])]
        skip = 0
    return values


def _decode_records(data: bytes, skip: int, limit: int) -> list[bytes] | None:
    """As `_decode_batches`, for records of kappaflow 0.1."""
    values: list[bytes] = []
    pos = 0
    while pos < len(data) and len(values) < limit:
        length, crc = RECORD.unpack_from(data, pos)
        pos += RECORD.size + length
        if skip:
            skip -= 1
            continue
        value = data[pos - length : pos]
        if len(value) != length or zlib.crc32(value) != crc:
            return None
        values.append(value)
    return values


def _scan_whole(data: bytes, suffix: str) -> tuple[int, int]:
    """Count and byte length of the whole, checksum-valid records at the start of
    ``data`` (record batches, or records of kappaflow 0.1 if ``suffix`` says so)."""
    frame = BATCH if suffix == BATCHES else RECORD
    view = memoryview(data)
    pos = count = 0
    while pos + frame.size <= len(data):
        if suffix == BATCHES:
            records, size, crc = BATCH.unpack_from(data, pos)
        else:
            (size, crc), records = RECORD.unpack_from(data, pos), 1
        end = pos + frame.size + size
        if end > len(data) or zlib.crc32(view[pos + frame.size : end]) != crc:
            break
        pos = end
        count += records
    return count, pos


class _Writer:
    """The single writer's handle on one partition: its active segment and index."""

    def __init__(self, path: Path, segment_bytes: int, fsync: bool) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        path.mkdir(parents=True, exist_ok=True)
        self.base, active = next(reversed(_segments(path).items()), (0, BATCHES))
        self.next_offset, self.position = self._recover(active)
        if active == RECORDS:  # kappaflow 0.1's segment: append to a new one
            if self.position == 0:
                for suffix in (RECORDS, ".index"):
                    (path / _segment_name(self.base, suffix)).unlink()
            self.base, self.position = self.next_offset, 0
        self.data = self._open(BATCHES)
        self.index = self._open(".index")
        self.unpublished: tuple[int, bytes] | None = None
        """Where the batch written but not yet published starts, and its index entry."""

    def _open(self, suffix: str) -> BinaryIO:
        return (self.path / _segment_name(self.base, suffix)).open("ab")

    def _recover(self, suffix: str = BATCHES) -> tuple[int, int]:
        """Cut the active segment (its data file named with ``suffix``) back to its last
        whole batch and index it."""
        log_path = self.path / _segment_name(self.base, suffix)
        index_path = self.path / _segment_name(self.base, ".index")
        log_path.touch()
        size = log_path.stat().st_size
        entries: list[tuple[int, int]] = []
        if index_path.exists():
            raw = index_path.read_bytes()
            for entry in ENTRY.iter_unpack(raw[: len(raw) - len(raw) % ENTRY.size]):
                if entry[1] > size or (entries and entry <= entries[-1]):
                    break
                entries.append(entry)
        offset, position = entries[-1] if entries else (self.base, 0)
        with log_path.open("r+b") as file:
            file.seek(position)
            count, length = _scan_whole(file.read(), suffix)
            if position + length < size:
                file.truncate(position + length)
            os.fsync(file.fileno())
        if count:
            entries.append((offset + count, position + length))
        with index_path.open("wb") as file:
            file.write(b"".join(ENTRY.pack(*entry) for entry in entries))
            os.fsync(file.fileno())
        return offset + count, position + length

    def write(self, values: Sequence[bytes]) -> int:
        """Write ``values`` as one batch, not yet durable (that takes `sync`) nor served
        to readers (that takes `publish`; or `discard` cuts it). Returns the batch's
        first offset."""
        if not values:
            return self.next_offset
        if self.position >= self.segment_bytes:
            self._roll()
        buffer = _encode_batch(values)
        first, start = self.next_offset, self.position
        try:
            self.data.write(buffer)
            self.data.flush()
        except OSError as error:
            raise self._cut(start, error) from error
        self.unpublished = (start, ENTRY.pack(first + len(values), start + len(buffer)))
        self.next_offset, self.position = first + len(values), start + len(buffer)
        return first

    def sync(self) -> None:
        """Make the batch `write` wrote durable (unless relaxed); when that fails, cut
        it and raise `LogUnavailable`."""
        if self.unpublished is None or not self.fsync:
            return
        try:
            os.fdatasync(self.data.fileno())
        except OSError as error:
            start, self.unpublished = self.unpublished[0], None
            raise self._cut(start, error) from error

    def publish(self) -> None:
        """Serve the batch `write` wrote: its index entry."""
        if self.unpublished is None:
            return
        start, entry = self.unpublished
        self.unpublished = None
        try:
            self.index.write(entry)
            self.index.flush()
        except OSError as error:
            raise self._cut(start, error) from error

    def discard(self) -> None:
        """Cut the batch `write` wrote, unserved (nothing to do once published)."""
        if self.unpublished is not None:
            self._reopen_after_failure(self.unpublished[0])
            self.unpublished = None

    def _cut(self, position: int, error: OSError) -> LogUnavailable:
        """Cut back to ``position`` after ``error``; returns the error to raise."""
        self._reopen_after_failure(position)
        return LogUnavailable(f"{self.path}: cannot append: {error.strerror}")

    def _reopen_after_failure(self, position: int) -> None:
        """Cut what a failed append left behind, so that nothing of it is ever served."""
        for file in (self.data, self.index):
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(OSError):
            os.truncate(self.path / _segment_name(self.base, BATCHES), position)
        self.next_offset, self.position = self._recover()
        self.data = self._open(BATCHES)
        self.index = self._open(".index")

    def _roll(self) -> None:
        self.close()
        self.base = self.next_offset
        self.position = 0
        self.data = self._open(BATCHES)
        self.index = self._open(".index")
        if self.fsync:
            directory = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def close(self) -> None:
        self.data.close()
        self.index.close()


class EmbeddedLog:
    """Segment-file log under ``root``. Open with ``writer=True`` in exactly one process."""

    def __init__(
        self,
        root: Path,
        *,
        writer: bool = False,
        fsync: Literal["batch", "never"] = "batch",
        segment_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync == "batch"
        self.segment_bytes = segment_bytes
        self._lock: BinaryIO | None = None
        self._writers: dict[tuple[str, int], _Writer] = {}
        self._readers: dict[tuple[str, int], _Partition] = {}
        self._partition_counts: dict[str, int] = {}
        self._syncs: ThreadPoolExecutor | None = None
        if writer:
            self._lock = (self.root / WRITER_LOCK).open("ab")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise LogUnavailable(_held_message(self.root, writer_pid(self.root))) from None
            self._lock.truncate(0)
            self._lock.write(str(os.getpid()).encode())
            self._lock.flush()
            for meta in sorted(self.root.glob("*/topic.json")):
                for partition in range(self.partitions(meta.parent.name)):
                    self._writer(meta.parent.name, partition)

    def create_topic(self, topic: str, partitions: int, forever: bool = False) -> None:
        """(Retention applies to the topics `apply_retention` is given only.)"""
        meta = self.root / topic / "topic.json"
        if meta.exists():
            existing = self.partitions(topic)
            if existing != partitions:
                raise LogError(
                    f"topic {topic!r} has {existing} partitions, not {partitions}; "
                    "the partition count of an existing topic cannot change"
                )
            return
        meta.parent.mkdir(parents=True, exist_ok=True)
        for partition in range(partitions):
            (meta.parent / str(partition)).mkdir(exist_ok=True)
        temporary = meta.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"partitions": partitions}))
        os.replace(temporary, meta)

    def partitions(self, topic: str) -> int:
        if topic not in self._partition_counts:
            try:
                meta = json.loads((self.root / topic / "topic.json").read_text())
            except FileNotFoundError:
                raise LogError(f"topic {topic!r} does not exist in {self.root}") from None
            self._partition_counts[topic] = int(meta["partitions"])
        return self._partition_counts[topic]

    def _check(self, topic: str, partition: int) -> None:
        count = self.partitions(topic)
        if not 0 <= partition < count:
            raise LogError(f"topic {topic!r} has no partition {partition} (it has {count})")

    def append(self, topic: str, partition: int, values: Sequence[bytes]) -> int:
        return self.append_partitions(topic, {partition: values})[partition]

    def append_partitions(
        self, topic: str, records: Mapping[int, Sequence[bytes]]
    ) -> dict[int, int]:
        """One write per partition, then their fsyncs at once; the batches are served
        once all of them are durable. When a write or an fsync fails, every batch of the
        append is cut: nothing of ``records`` is served. (Only a failure to write an index
        entry, 16 bytes, after others were written, leaves the partitions before it
        served.)"""
        if self._lock is None:
            raise LogError("this log was opened for reading; open it with writer=True to append")
        writers = {partition: self._writer(topic, partition) for partition in records}
        try:
            firsts = {partition: writers[partition].write(values)
                      for partition, values in records.items()}  # fmt: skip
            self._sync([*writers.values()])
            for writer in writers.values():
                writer.publish()
        except LogUnavailable:
            for writer in writers.values():
                writer.discard()  # those written and not yet published
            raise
        return firsts

    def _sync(self, writers: list[_Writer]) -> None:
        """`_Writer.sync` of each writer, in threads when there are several: the file
        system then makes them durable together (on ext4, in one journal commit), where
        one after another each waited for its own. Raises the first failure once all
        are done."""
        if len(writers) < 2 or not self.fsync:
            for writer in writers:
                writer.sync()
            return
        if self._syncs is None:
            self._syncs = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="kappaflow-fsync")
        futures = [self._syncs.submit(writer.sync) for writer in writers]
        wait(futures)
        for future in futures:
            future.result()

    def _writer(self, topic: str, partition: int) -> _Writer:
        """The partition's writer, recovering its tail the first time."""
        key = (topic, partition)
        if key not in self._writers:
            self._check(topic, partition)
            self._writers[key] = _Writer(
                self.root / topic / str(partition), self.segment_bytes, self.fsync
            )
        return self._writers[key]

    def _reader(self, topic: str, partition: int) -> _Partition:
        key = (topic, partition)
        if key not in self._readers:
            self._check(topic, partition)
            self._readers[key] = _Partition(self.root / topic / str(partition))
        return self._readers[key]

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> RecordBatch:
        reader = self._reader(topic, partition)
        with reader.lock:
            return reader.read(offset, max_records)

    def end_offsets(self, topic: str) -> dict[int, int]:
        ends = {}
        for partition in range(self.partitions(topic)):
            reader = self._reader(topic, partition)
            with reader.lock:
                ends[partition] = reader.end()
        return ends

    def start_offsets(self, topic: str) -> dict[int, int]:
        starts = {}
        for partition in range(self.partitions(topic)):
            reader = self._reader(topic, partition)
            with reader.lock:
                reader.refresh_segments()
                starts[partition] = reader.bases[0] if reader.bases else 0
        return starts

    def apply_retention(
        self,
        topic: str,
        groups: Collection[str],
        max_bytes: int,
        max_age_s: float,
        now: float | None = None,
    ) -> int:
        """Delete whole segments that are over the size or age limit and lie entirely
        below the offset every one of ``groups`` acknowledged (see `acknowledge`): a
        partition one of them never acknowledged keeps everything. The active segment is
        never deleted. Returns the number of segments deleted."""
        now = time.time() if now is None else now
        acknowledged = [self.acknowledged(group, topic) for group in groups]
        safe_offsets = {
            partition: min(offsets[partition] for offsets in acknowledged)
            for partition in range(self.partitions(topic))
            if acknowledged and all(partition in offsets for offsets in acknowledged)
        }
        deleted = 0
        for partition, safe in safe_offsets.items():
            path = self.root / topic / str(partition)
            segments = _segments(path)
            sizes = {b: (path / _segment_name(b, suffix)).stat() for b, suffix in segments.items()}
            total = sum(s.st_size for s in sizes.values())
            for base, following in itertools.pairwise(segments):
                over_size = max_bytes > 0 and total > max_bytes
                too_old = max_age_s > 0 and now - sizes[base].st_mtime > max_age_s
                if following > safe or not (over_size or too_old):
                    break
                for suffix in (segments[base], ".index"):
                    (path / _segment_name(base, suffix)).unlink(missing_ok=True)
                total -= sizes[base].st_size
                deleted += 1
        return deleted

    def acknowledge(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Set ``group``'s offsets of these partitions in its file, which is replaced
        whole (readers see the last file or the new one) under a lock, as the group's
        workers each acknowledge their own partitions. Not fsynced: the store holds the
        truth, and a copy older than it only makes the backlog look longer and
        retention keep more. A failure is logged, not raised; the next commit writes
        the file again."""
        path = self._acknowledged_path(group, topic)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path.with_suffix(".lock")):
                merged = {**self.acknowledged(group, topic), **offsets}
                temporary = path.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(json.dumps({str(p): o for p, o in sorted(merged.items())}))
                os.replace(temporary, path)
        except OSError as error:
            log.warning("cannot note %s's offsets of %s in %s: %s", group, topic, path, error)

    def acknowledged(self, group: str, topic: str) -> dict[int, int]:
        """The offsets ``group`` last acknowledged, of the partitions it acknowledged
        (none if its file is missing or unreadable)."""
        try:
            found = json.loads(self._acknowledged_path(group, topic).read_bytes())
            return {int(partition): int(offset) for partition, offset in found.items()}
        except (OSError, ValueError):  # a file torn by a power loss: as if missing
            return {}

    def _acknowledged_path(self, group: str, topic: str) -> Path:
        return self.root / topic / "groups" / f"{group}.json"

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if self._syncs is not None:
            self._syncs.shutdown()
            self._syncs = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def writer_pid(root: Path) -> int | None:
    """The pid of the process writing the log at ``root``, None if none is (0 if it
    did not say)."""
    try:
        lock = (Path(root) / WRITER_LOCK).open("rb")
    except FileNotFoundError:
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(lock, fcntl.LOCK_UN)
        return None


def check_unwritten(root: Path) -> None:
    """Raise `LogUnavailable` naming the process that writes the log at ``root``, if
    one does."""
    pid = writer_pid(root)
    if pid is not None:
        raise LogUnavailable(_held_message(root, pid))


def _held_message(root: Path, pid: int | None) -> str:
    holder = f"another process (pid {pid})" if pid else "another process"
    return (f"{holder} is writing to the log at {root}; stop it first, or use another "
            "data directory")  # fmt: skip


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file at ``path`` (created if missing)."""
    with path.open("ab") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield
