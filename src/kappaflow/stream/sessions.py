"""Session windows: per key, events are ordered by event time, held until the key's
watermark passes them, and grouped into sessions that end after ``gap_ms`` of event
time without an event. A `SessionFold` says what a session accumulates and which
rows it yields, both for closed sessions and for the still-open view of a key.

Each key runs on its own event clock, its latest event time (`kappaflow.stream.lateness`):
an item more than the allowed lateness before it is refused as late, and the key's
watermark is its clock less the lateness, so no key's clock costs another key its
events. A key is visited when it gets items: the visit folds in the items its watermark
has passed and closes the sessions that ended. A key without items for the idle time
(on the batches' clock, which runs while the worker keeps up) has everything folded and
its session closed.

Items are tuples whose first element is the event time in milliseconds; the rest
breaks ties, so the order of a key's items depends on their content only, never on
arrival. An item equal to one still pending is a duplicate and is refused.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from kappaflow.app import Batch, Output, Rows
from kappaflow.errors import StateFormatError
from kappaflow.stream.due import DueKeys
from kappaflow.stream.lateness import late_reason


class SessionFold(Protocol):
    def items(
        self, events: list[Any], times_ms: list[int], offsets: list[int]
    ) -> list[tuple[str, Any]]:
        """Each event's session key and sortable item (a tuple, event time first); with
        its offset in it, no two events are equal (none is a duplicate)."""

    def start(self, item: Any) -> Any:
        """The accumulator of a session opened by ``item``."""

    def extend(self, acc: Any, items: list[Any]) -> Any:
        """The accumulator after ``items``, sorted and of the same session, in turn; may
        change ``acc`` in place. A run of items in one call: a loop over locals costs
        far less per item than a call per item."""

    def copy(self, acc: Any) -> Any:
        """An accumulator that `extend` can change without changing ``acc``."""

    def closed(self, key: str, acc: Any, rows: Rows) -> None:
        """Add the rows of a session that has ended for good."""

    def view(self, key: str, accs: list[Any], rows: Rows) -> None:
        """Add the rows showing the key's sessions not yet closed (provisional)."""


class KeyState(msgspec.Struct, array_like=True):
    acc: Any = None
    """The open session, or None."""
    last_ms: int = 0
    """Event time of the open session's last item."""
    pending: list[tuple[Any, ...]] = []
    """Items not yet folded into ``acc``, sorted: those the watermark has not passed,
    and those it has passed since the key was last visited."""
    view: list[Any] | None = None
    """The provisional sessions: ``acc`` folded on over the first ``viewed`` items of
    ``pending`` (the rest are folded in when the view is next needed); None when it
    must be folded again. Derived, so never persisted."""
    viewed: int = 0
    """How many of ``pending`` the view has folded."""


class SessionState:
    """Per-partition state: each key's open session and pending items. ``idle`` holds
    the keys by the time (on the batches' clock) at which they have been idle long
    enough; keys restored are scheduled there at the first batch, when the clock is
    known.
    ``changed`` holds the keys changed since the state was last persisted. A key whose
    visit only folded items (no session closed) is left out: restored, its stored state
    folds them at its next visit, to the same result."""

    def __init__(self, keys: dict[str, KeyState]) -> None:
        self.keys = keys
        self.changed: set[str] = set()
        self.idle = DueKeys()
        self.unscheduled = list(keys)


_NEVER = 1 << 62


def _latest(state: KeyState) -> int:
    """The key's clock: the latest event time of its open session or pending items."""
    latest = state.last_ms if state.acc is not None else -_NEVER
    return max(latest, state.pending[-1][0]) if state.pending else latest


_KEY_DECODER = msgspec.msgpack.Decoder(KeyState)


def refuse_partition_state(operator: str, data: bytes) -> None:
    """Raise `StateFormatError` when a keyed ``operator``, which writes no state of a
    whole partition, is restored with some (``data``, from an earlier version)."""
    if data:
        raise StateFormatError(
            f"{operator} keep no state of a whole partition, but the store holds "
            f"{len(data)} bytes of it"
        )


class SessionWindows:
    """A `Processor` running session windows with ``fold``; it judges lateness per key
    (``lateness_ms``) and closes a key's session after ``idle_ms`` without its events
    (on the batches' clock)."""

    judges_lateness = True

    def __init__(
        self, fold: SessionFold, gap_ms: int, lateness_ms: int = 30_000, idle_ms: int = 30_000
    ) -> None:
        self.fold = fold
        self.gap_ms, self.lateness_ms, self.idle_ms = gap_ms, lateness_ms, idle_ms
        self._encoder = msgspec.msgpack.Encoder()

    def initial_state(self) -> SessionState:
        return SessionState({})

    def encode(self, state: SessionState) -> bytes:
        return b""  # all of it is keyed

    def key_count(self, state: SessionState) -> int:
        return len(state.keys)

    def changed_keys(self, state: SessionState) -> dict[str, bytes | None]:
        keys, encode = state.keys, self._encoder.encode
        changed = {
            key: encode((s.acc, s.last_ms, s.pending)) if (s := keys.get(key)) is not None else None
            for key in state.changed
        }
        state.changed = set()
        return changed

    def decode(self, data: bytes, keys: Mapping[str, bytes]) -> SessionState:
        """The state from its keys, as `changed_keys` wrote them. Raises
        `StateFormatError` for a key in another format, or for ``data`` (this operator
        writes none)."""
        refuse_partition_state("session windows", data)
        restored = {}
        for key, value in keys.items():
            try:
                restored[key] = _KEY_DECODER.decode(value)
            except msgspec.DecodeError as error:
                raise StateFormatError(
                    f"the session state of key {key!r} is not as session windows write it ({error})"
                ) from None
        return SessionState(restored)

    def process(self, state: SessionState, batch: Batch) -> Output[SessionState]:
        keys, fold, now = state.keys, self.fold, batch.clock_ms
        if state.unscheduled:
            for key in state.unscheduled:
                state.idle.schedule(key, now + self.idle_ms)
            state.unscheduled = []
        touched: set[str] = set()  # keys whose provisional view changed
        refused: list[tuple[int, str]] = []
        keyed = fold.items(batch.events, batch.times_ms, batch.offsets)
        for offset, (key, item) in zip(batch.offsets, keyed, strict=True):
            current = keys.get(key)
            if current is None:
                keys[key] = current = KeyState(None, 0, [item])
            elif item[0] < (latest := _latest(current)) - self.lateness_ms:
                refused.append((offset, late_reason(item[0], latest, self.lateness_ms)))
                continue
            else:
                pending = current.pending
                if not pending or item > pending[-1]:
                    pending.append(item)
                elif item in pending:
                    refused.append((offset, "duplicate"))
                    continue
                else:
                    bisect.insort(pending, item)
                    current.view = None
            touched.add(key)
            state.idle.schedule(key, now + self.idle_ms)

        rows: Rows = {}
        visits = [(key, _latest(keys[key]) - self.lateness_ms) for key in touched]
        visits += [(key, _NEVER) for key in state.idle.pop(now) if key in keys]
        for key, watermark in visits:
            current = keys[key]
            if self._advance(key, current, watermark, rows):
                touched.add(key)
            if current.acc is None and not current.pending:
                del keys[key]

        state.changed |= touched  # new items, or a session closed
        for key in touched:
            current = keys.get(key)
            if current is not None:
                fold.view(key, self._provisional(current), rows)
        return Output(state, rows, refused)

    def _advance(self, key: str, state: KeyState, watermark: int, rows: Rows) -> bool:
        """Fold the items the watermark has passed; close the session if it ended.
        When it has passed all of them, the view is that fold. Returns whether a session
        closed."""
        fold, gap = self.fold, self.gap_ms
        pending, last = state.pending, state.last_ms
        if pending and pending[-1][0] < watermark:
            # All of them: the view is their fold, its sessions but the last ended.
            sessions, released, last = self._provisional(state), len(pending), pending[-1][0]
        else:
            released = bisect.bisect_left(pending, (watermark,))  # those below it
            sessions = [] if state.acc is None else [state.acc]
            if released:
                last = self._fold_onto(sessions, last, pending[:released])
        for ended in sessions[:-1]:
            fold.closed(key, ended, rows)
        acc, closed = sessions[-1] if sessions else None, len(sessions) > 1
        viewed = state.viewed - released
        del pending[:released]
        if acc is not None and last + gap < watermark:
            fold.closed(key, acc, rows)
            acc, closed = None, True
        state.acc, state.last_ms = acc, last
        if closed or viewed <= 0:
            # Its first session closed, or it folded released items only: the view
            # folded again from ``acc`` takes no more items than folding it on would.
            state.view = None
        else:
            state.viewed = viewed
        return closed

    def _provisional(self, state: KeyState) -> list[Any]:
        """The key's sessions as they stand, pending items included; kept in
        ``state.view`` while there are pending items."""
        pending, view = state.pending, state.view
        if view is None:
            if not pending:
                return [state.acc]
            view = [] if state.acc is None else [self.fold.copy(state.acc)]
            last, unseen = state.last_ms, pending
            state.view = view
        else:
            last, unseen = pending[state.viewed - 1][0], pending[state.viewed :]
        if not unseen:
            return view
        if view and unseen[-1][0] - last <= self.gap_ms:
            # Onto the last session, as for a key's one new item (saves a call).
            view[-1] = self.fold.extend(view[-1], unseen)
        else:
            self._fold_onto(view, last, unseen)
        state.viewed = len(pending)
        return view

    def _fold_onto(self, sessions: list[Any], last_ms: int, items: list[Any]) -> int:
        """Fold ``items`` (sorted, after ``last_ms``, at least one) onto ``sessions``,
        whose last one ended at ``last_ms``; an item more than the gap after the one
        before opens a session. Returns the last item's time."""
        fold, gap = self.fold, self.gap_ms
        first_ms, end_ms = items[0][0], items[-1][0]
        if sessions and first_ms - last_ms <= gap and end_ms - first_ms <= gap:  # one run
            sessions[-1] = fold.extend(sessions[-1], items)
            return end_ms
        last = last_ms if sessions else -_NEVER  # the first item opens the first session
        run = 0  # where the items not yet folded start
        for i, item in enumerate(items):
            time_ms = item[0]
            if time_ms - last > gap:
                if i > run:
                    sessions[-1] = fold.extend(sessions[-1], items[run:i])
                sessions.append(fold.start(item))
                run = i + 1
            last = time_ms
        if run < len(items):
            sessions[-1] = fold.extend(sessions[-1], items[run:])
        return end_ms
