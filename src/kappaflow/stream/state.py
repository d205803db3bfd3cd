"""Keyed state: a partition's map of keys (strings) to values of one type, which a
processor reads and writes as it goes through a batch. Values rest encoded, as the store
keeps them: a restore decodes nothing, and a value is decoded when a batch first reads
it. When the batch ends, each value it read or wrote is encoded and compared with the
stored one, so that its commit writes exactly the keys whose value changed (with the
rows and the partition's next offset: `kappaflow.store.keyed`). With a TTL, a key not
set for that long of the partition's event time is deleted, and the deletion committed,
so that state stays bounded. A processor that packs its values into bytes itself keeps
them in a `PackedState`, stored as they are."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import msgspec

from kappaflow.stream.due import DueKeys

V = TypeVar("V")

_STAMPED = 0xC1
"""The first byte of a value kept with its stamp (then the stamp, then the value):
msgpack never begins a value with it, so values stored without a TTL are told apart."""
_STAMP = struct.Struct("<Bq")
_UNREAD = object()
"""A key the open batch has not read."""
_GONE = object()
"""A key the open batch deleted."""


class State(Generic[V]):
    """One partition's keyed state, values of ``value_type`` (anything msgspec encodes:
    Structs, dicts, lists, numbers, text). ``get`` returns the value to change and
    ``set`` again; a value changed in place is committed too, since every value a batch
    reads is compared with the stored one when the batch ends. Keys are strings.

    With ``ttl_ms``, a key not set for that long of the partition's event time (its
    watermark) is deleted at a batch (see `advance`): never sooner, and by then at most
    two batches' spans of event time later.

    The processor that owns the state calls `advance` before a batch, `flush` after it
    (a value that cannot be stored then fails that batch), and `changes` for what to
    commit, with `now_ms`."""

    def __init__(
        self,
        value_type: Any,
        ttl_ms: int | None = None,
        stored: Mapping[str, bytes] = {},
        changed: Iterable[str] = (),
        now_ms: int | None = None,
    ) -> None:
        """``stored``: each key's value as `changes` gave it, and ``changed``, those of
        its keys not yet committed; ``now_ms``, the `now_ms` committed with them."""
        self.value_type = value_type
        self.ttl_ms = ttl_ms
        self.now_ms = now_ms
        """The partition's event time: the latest `advance` moved it to (None: none
        yet)."""
        self._decoder = msgspec.msgpack.Decoder(value_type)
        self._encode = msgspec.msgpack.Encoder().encode
        self._stored = dict(stored)
        self._open: dict[str, Any] = {}
        """The values read or written since the last `flush` (`_GONE`: deleted)."""
        self._changes: dict[str, bytes | None] = {key: self._stored[key] for key in changed}
        self._set_at: dict[str, int] = {}
        """With a TTL: the keys set since the last `flush`, each with its stamp (the
        others' stamps are stored with their values)."""
        self._due = DueKeys()
        """With a TTL: each key once, due when it can expire at the earliest."""
        self._unstamped: list[str] = []
        """With a TTL: keys stored without a stamp, set again at the next `advance`."""
        if ttl_ms is not None:
            for key, data in self._stored.items():
                if data[0] == _STAMPED:
                    self._due.schedule(key, _STAMP.unpack_from(data)[1] + ttl_ms)
                else:
                    self._unstamped.append(key)

    def get(self, key: str, default: Any = None) -> V | Any:
        """The value of ``key``, or ``default`` if it has none."""
        value = self._open.get(key, _UNREAD)
        if value is _UNREAD:
            data = self._stored.get(key)
            if data is None:
                return default
            value = self._open[key] = self._decode(data)
        return default if value is _GONE else value

    def set(self, key: str, value: V) -> None:
        if type(key) is not str:
            raise TypeError(f"keyed state: a key is a string, got {key!r}; use str(key)")
        self._open[key] = value
        if self.ttl_ms is not None:
            if self.now_ms is None:
                raise RuntimeError("keyed state with a TTL: call advance(now_ms) before set")
            self._set_at[key] = self.now_ms
            if key not in self._due.scheduled:  # else it is scheduled again when due
                self._due.schedule(key, self.now_ms + self.ttl_ms)

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing happens if it has no value)."""
        if key in self._open or key in self._stored:
            self._open[key] = _GONE
            self._set_at.pop(key, None)

    def __contains__(self, key: object) -> bool:
        value = self._open.get(key, _UNREAD)  # type: ignore[call-overload]
        return key in self._stored if value is _UNREAD else value is not _GONE

    def __iter__(self) -> Iterator[str]:
        """The keys, in no set order (it may differ after a restore: sort them where
        the order matters). The state may change while they are iterated."""
        opened, stored = self._open, self._stored
        keys = [key for key in stored if opened.get(key) is not _GONE]
        keys += [key for key, value in opened.items() if value is not _GONE and key not in stored]
        return iter(keys)

    def items(self) -> Iterator[tuple[str, V]]:
        """Each key and its value, as `get` gives it (each is compared with the stored
        one when the batch ends)."""
        for key in self:
            yield key, self.get(key)

    def __len__(self) -> int:
        count = len(self._stored)
        for key, value in self._open.items():
            if key in self._stored:
                count -= value is _GONE
            else:
                count += value is not _GONE
        return count

    def advance(self, now_ms: int) -> None:
        """A batch moves the partition's event time on to ``now_ms`` (its watermark; the
        time never goes back). With a TTL, each key not set for ``ttl_ms`` by the time
        before the batch is deleted (the batch's events may come before ``now_ms``, and
        one of them may set the key again), and the keys the batch sets are stamped
        ``now_ms``: no key goes sooner than ``ttl_ms`` after an event set it. Keys
        stored without a stamp (by a processor without a TTL) count as set by the
        batch."""
        before = self.now_ms
        self.now_ms = now_ms if before is None else max(before, now_ms)
        if self.ttl_ms is None:
            return
        for key in self._unstamped:
            if key in self:
                self.set(key, self.get(key))
        self._unstamped = []
        if before is None:
            return
        for key in self._due.pop(before):
            stamp = self._stamp_of(key)
            if stamp is None:  # deleted since
                continue
            if stamp + self.ttl_ms <= before:
                self.delete(key)
            else:  # set again since it was scheduled
                self._due.schedule(key, stamp + self.ttl_ms)

    def flush(self) -> None:
        """End the batch: encode each value it read or wrote; those that differ from
        the stored ones are changes. Raises `TypeError` naming the key of a value that
        cannot be stored as ``value_type``."""
        stored, changes = self._stored, self._changes
        for key, value in self._open.items():
            old = stored.get(key)
            if value is _GONE:
                if old is not None:
                    del stored[key]
                    changes[key] = None
                continue
            try:
                data = self._encode(value)
                if self.ttl_ms is not None:
                    stamp = self._set_at.get(key)
                    if stamp is None:  # read only: as stored
                        stamp = _STAMP.unpack_from(old)[1]  # type: ignore[arg-type]
                    data = _STAMP.pack(_STAMPED, stamp) + data
                if data != old:
                    self._decode(data)  # as a restore will: a value of another type fails now
                    stored[key] = changes[key] = data
            except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as error:
                raise TypeError(
                    f"keyed state: the value of key {key!r} cannot be stored as "
                    f"{_name(self.value_type)}: {error}"
                ) from error
        self._open.clear()
        self._set_at.clear()

    def changes(self) -> dict[str, bytes | None]:
        """The keys changed since the last call (after a `flush`), each value as stored,
        None for a key deleted."""
        self.flush()
        changes, self._changes = self._changes, {}
        return changes

    def _decode(self, data: bytes) -> V:
        if data[0] == _STAMPED:
            return self._decoder.decode(memoryview(data)[_STAMP.size :])
        return self._decoder.decode(data)

    def _stamp_of(self, key: str) -> int | None:
        """When ``key`` was last set; None if it has no value."""
        stamp = self._set_at.get(key)
        if stamp is not None or key not in self:
            return stamp
        return _STAMP.unpack_from(self._stored[key])[1]


def _name(value_type: Any) -> str:
    return getattr(value_type, "__name__", repr(value_type))


class PackedState(State[bytes]):
    """Keyed state whose values are bytes the processor packs itself (its own format,
    which it must recognise on restore), stored as they are: no msgpack around them, so
    a restore can hand the stored bytes to the processor whole. No TTL: the processor
    deletes its keys itself."""

    def __init__(self, stored: Mapping[str, bytes] = {}, changed: Iterable[str] = ()) -> None:
        super().__init__(bytes, None, stored, changed)
        self._encode = _packed

    def update(self, values: Mapping[str, bytes | None]) -> None:
        """Give each key of ``values`` its bytes, or delete it (None): `set` and `delete`
        at once for the keys a processor packed together."""
        self.flush()
        stored, changes = self._stored, self._changes
        for key, value in values.items():
            if value is None:
                if stored.pop(key, None) is not None:
                    changes[key] = None
            elif type(value) is not bytes:
                raise TypeError(f"keyed state: the value of key {key!r} is not bytes: {value!r}")
            elif value != stored.get(key):
                stored[key] = changes[key] = value

    def _decode(self, data: bytes) -> bytes:
        return data


def _packed(value: object) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"a packed value is bytes, got {type(value).__name__}")
    return value
