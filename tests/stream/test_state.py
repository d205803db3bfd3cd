"""Keyed state (`State`, and `PackedState` of bytes the processor packs) and the
function processor on it: what a commit writes, what a restore reads back, and the keys
a TTL deletes; through the worker, the same results after restarts as without, and the
count of keys on /metrics."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from visits_app import TTL_S, Hit, create_app, hits, visits
from visits_app import kept as kept_keys

from kappaflow.app import Batch, FunctionProcessor, Output
from kappaflow.errors import AppError
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store.base import Store
from kappaflow.stream.state import PackedState, State
from kappaflow.stream.worker import Worker
from kappaflow.testing import run_events


class Sensor(msgspec.Struct, array_like=True):
    last_ms: int
    hot: bool


def committed(state: State, store: dict[str, bytes]) -> dict[str, bytes | None]:
    """Commit ``state``'s changes into ``store`` (as the store's log of changes does);
    returns them."""
    changes = state.changes()
    for key, value in changes.items():
        if value is None:
            del store[key]
        else:
            store[key] = value
    return changes


def contents(state: State) -> dict:
    return {key: state.get(key) for key in state}


def test_a_commit_writes_exactly_the_keys_whose_value_changed() -> None:
    store: dict[str, bytes] = {}
    state = State(Sensor)
    for key in "abcd":
        state.set(key, Sensor(1, False))
    committed(state, store)
    state = State(Sensor, stored=store)
    assert state.get("a") == Sensor(1, False)  # read only
    state.set("b", Sensor(1, False))  # set to what it was
    state.set("c", Sensor(2, True))
    state.set("e", Sensor(3, False))
    state.delete("d")
    state.delete("nothing")
    changes = committed(state, store)
    assert changes == {"c": msgspec.msgpack.encode(Sensor(2, True)),
                       "e": msgspec.msgpack.encode(Sensor(3, False)), "d": None}  # fmt: skip
    assert state.changes() == {}
    assert contents(State(Sensor, stored=store)) == contents(state)


def test_a_value_changed_in_place_is_committed() -> None:
    store: dict[str, bytes] = {}
    state = State(dict[str, int])
    state.set("a", {"n": 1})
    committed(state, store)
    state.get("a")["n"] += 1
    assert committed(state, store) == {"a": msgspec.msgpack.encode({"n": 2})}
    assert State(dict[str, int], stored=store).get("a") == {"n": 2}


def test_get_set_delete_contains_iterate_and_count() -> None:
    state = State(int, stored={"a": msgspec.msgpack.encode(1), "b": msgspec.msgpack.encode(2)})
    assert (state.get("a"), state.get("z"), state.get("z", 0)) == (1, None, 0)
    state.delete("a")
    state.set("c", 3)
    assert ("a" in state, "b" in state, "c" in state) == (False, True, True)
    assert sorted(state) == ["b", "c"] and len(state) == 2
    assert dict(state.items()) == {"b": 2, "c": 3}
    for key in state:  # deleting while iterating
        state.delete(key)
    state.set("a", 4)
    assert (list(state), len(state), state.get("a")) == (["a"], 1, 4)


def test_a_value_that_cannot_be_stored_fails_the_batch_naming_the_key() -> None:
    state = State(Sensor)
    state.set("kitchen", {"last_ms": 1})
    with pytest.raises(TypeError, match="value of key 'kitchen' cannot be stored as Sensor"):
        state.flush()
    with pytest.raises(TypeError, match="a key is a string, got 7"):
        state.set(7, Sensor(1, False))  # type: ignore[arg-type]


def test_packed_values_are_stored_and_restored_as_the_processor_packed_them() -> None:
    store: dict[str, bytes] = {}
    state = PackedState()
    state.set("a", b"\xc1\x00")  # what msgpack never starts a value with
    state.set("b", b"")
    assert committed(state, store) == {"a": b"\xc1\x00", "b": b""}
    state = PackedState(store)
    assert (state.get("a"), len(state)) == (b"\xc1\x00", 2)
    state.set("a", b"\xc1\x00")  # the same bytes again
    state.set("b", b"\x01")
    state.delete("a")
    assert committed(state, store) == {"a": None, "b": b"\x01"}
    state.update({"b": b"\x01", "c": b"\x02", "d": None, "e": None})  # "e" was never set
    assert committed(state, store) == {"c": b"\x02"}
    state.update({"c": None})
    assert committed(state, store) == {"c": None}
    with pytest.raises(TypeError, match="value of key 'c' is not bytes: 2"):
        state.update({"c": 2})  # type: ignore[dict-item]
    state.set("c", bytearray(b"\x02"))
    with pytest.raises(TypeError, match="value of key 'c' cannot be stored as bytes: a packed "
                                        "value is bytes, got bytearray"):  # fmt: skip
        state.flush()


def test_a_key_not_set_for_the_ttl_is_deleted_and_the_deletion_committed() -> None:
    """Judged at a batch by the time before it: its events may come before its
    watermark, and a key set again by one of them is kept."""
    store: dict[str, bytes] = {}
    state = State(int, ttl_ms=1_000)
    state.advance(0)
    state.set("a", 1)
    state.set("b", 1)
    committed(state, store)
    state.advance(500)
    state.set("b", 2)
    assert state.get("a") == 1  # read: not set again
    assert set(committed(state, store)) == {"b"}
    state.advance(1_000)
    assert sorted(state) == ["a", "b"]
    state.advance(1_001)
    assert "a" not in state and committed(state, store) == {"a": None}
    restored = State(int, ttl_ms=1_000, stored=store, now_ms=state.now_ms)
    restored.advance(1_500)
    assert contents(restored) == {"b": 2}
    restored.advance(1_501)
    assert (len(restored), committed(restored, store), store) == (0, {"b": None}, {})


def test_keys_stored_without_a_ttl_expire_a_ttl_after_the_first_batch() -> None:
    store: dict[str, bytes] = {}
    state = State(int)
    state.set("a", 1)
    committed(state, store)
    state = State(int, ttl_ms=1_000, stored=store)
    state.advance(5_000)
    assert set(committed(state, store)) == {"a"}  # written again with its stamp
    state = State(int, ttl_ms=1_000, stored=store, now_ms=5_000)
    state.advance(6_000)
    assert contents(state) == {"a": 1}
    state.advance(6_001)
    assert committed(state, store) == {"a": None}


def test_values_stored_with_a_ttl_read_without_one() -> None:
    store: dict[str, bytes] = {}
    state = State(int, ttl_ms=1_000)
    state.advance(0)
    state.set("a", 1)
    committed(state, store)
    state = State(int, stored=store)
    assert state.get("a") == 1
    assert committed(state, store) == {"a": msgspec.msgpack.encode(1)}


OPS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from("abcde"), st.integers(0, 3)),
    st.tuples(st.just("add"), st.sampled_from("abcde"), st.just(1)),
    st.tuples(st.just("delete"), st.sampled_from("abcde"), st.just(0)),
    st.tuples(st.just("advance"), st.just(""), st.integers(0, 400)),
    st.tuples(st.just("commit"), st.just(""), st.just(0)),
    st.tuples(st.just("restart"), st.just(""), st.just(0)),
)


@given(st.lists(OPS, max_size=80), st.sampled_from([None, 500]))
def test_state_restored_from_its_commits_is_the_state_committed(
    ops: list[tuple[str, str, int]], ttl_ms: int | None
) -> None:
    """Against a plain dict with the time each key was set: a restart returns to the
    last commit, whose values, stamps and time it restores; a key deleted or expired
    never comes back."""
    store: dict[str, bytes] = {}
    state: State[list[int]] = State(list[int], ttl_ms)
    state.advance(0)
    now, model, stamps = 0, {}, {}
    saved = (now, {}, {})
    for op, key, value in ops:
        if op == "set":
            state.set(key, [value])
            model[key], stamps[key] = [value], now
        elif op == "add" and key in model:
            state.get(key).append(value)  # in place: it is committed, but stamps nothing
            model[key] = [*model[key], value]
        elif op == "delete":
            state.delete(key)
            model.pop(key, None)
        elif op == "advance":
            if ttl_ms is not None:
                model = {k: v for k, v in model.items() if stamps[k] + ttl_ms > now}
            now += value
            state.advance(now)
        elif op == "commit":
            committed(state, store)
            saved = (now, dict(model), dict(stamps))
        elif op == "restart":
            state = State(list[int], ttl_ms, stored=store, now_ms=saved[0])
            now, model, stamps = saved[0], dict(saved[1]), dict(saved[2])
        assert contents(state) == model
        assert len(state) == len(model)


def test_the_function_may_return_rows_or_an_output_and_nothing_else() -> None:
    batch = Batch(0, [7], [object()], [1_000], 1_000)
    rows = FunctionProcessor(lambda state, batch: {"t": [(1,)]}, int)
    assert rows.process(rows.initial_state(), batch).rows == {"t": [(1,)]}
    refusing = FunctionProcessor(lambda state, batch: Output(state, {}, [(7, "no: why")]), int)
    assert refusing.process(refusing.initial_state(), batch).dead_letters == [(7, "no: why")]

    def forgot(state: State[int], batch: Batch) -> None:
        state.set("a", 1)

    nothing = FunctionProcessor(forgot, int)
    with pytest.raises(TypeError, match="forgot returned NoneType: return the rows by table"):
        nothing.process(nothing.initial_state(), batch)


def test_a_whole_state_kept_by_an_earlier_version_is_restored_and_written_by_key() -> None:
    processor = FunctionProcessor(lambda state, batch: {}, Sensor)
    snapshot = msgspec.msgpack.encode({"a": Sensor(1, True), "b": Sensor(2, False)})
    state = processor.decode(snapshot, {"b": msgspec.msgpack.encode(Sensor(3, False))})
    assert contents(state) == {"a": Sensor(1, True), "b": Sensor(3, False)}
    assert set(processor.changed_keys(state)) == {"a"}
    assert processor.encode(state) == b""


def test_a_restored_processor_expires_keys_as_the_one_that_ran_on() -> None:
    """The partition's event time is committed with the keys: the first batch after a
    restore deletes what the next batch of an uninterrupted run would."""
    processor = create_app(Settings()).processors["hits"]
    ttl_ms = TTL_S * 1000

    def run(state: State, key: str, wm: int) -> dict:
        return processor.process(state, Batch(0, [0], [Hit(key, wm)], [wm], wm)).rows

    ran_on = processor.initial_state()
    run(ran_on, "a", 0)
    run(ran_on, "b", ttl_ms + 1)  # "a" was not a TTL old before this batch
    restored = processor.decode(processor.encode(ran_on), processor.changed_keys(ran_on))
    later = ttl_ms + 2  # ... and is before this one
    assert run(restored, "a", later) == run(ran_on, "a", later) == {"visits": [("a", later, 1)]}


def stored_keys(store: Store, group: str) -> dict[int, set[str]]:
    return {p: set(claim.keys) for p, claim in store.claim(group, range(4), "test").items()}


def test_restarts_give_the_visits_counted_from_scratch(settings: Settings, tmp_path: Path) -> None:
    """A restart reads its batches from where an uninterrupted run's were cut: its keys
    expire at the same batches, and none that expired counts on after a restart."""
    settings = settings.replace(batch_max_events=300)
    events = hits(40_000)
    app = create_app(settings)
    group = app.group(app.streams[0])
    store = run_events(app, events, settings, restarts=8, seed=4)
    expected = sorted(visits(events))
    assert len(expected) > 2 * len({key for key, *_ in expected})  # keys came back
    assert store.query("SELECT * FROM visits ORDER BY 1, 2") == expected
    kept = stored_keys(store, group)
    for partition, keys in kept.items():
        assert REGISTRY.get_sample_value(
            "kappaflow_state_keys", {"group": group, "partition": str(partition)}
        ) == len(keys)
    uninterrupted = settings.replace(data_dir=str(tmp_path / "uninterrupted"))
    assert stored_keys(run_events(app, events, uninterrupted), group) == kept
    must, may = kept_keys(events)
    assert must <= set().union(*kept.values()) <= may
    assert len({hit.key for hit in events} - may) > 50  # deleted


def test_a_worker_shows_no_count_of_keys_for_a_partition_it_let_go(settings: Settings) -> None:
    app = create_app(settings)
    store = run_events(app, hits(4_000), settings)
    group = app.group(app.streams[0])
    worker = Worker(app, app.streams[0], open_log(settings), store, settings, range(4))
    worker.start()

    def shown(partition: int) -> float | None:
        labels = {"group": group, "partition": str(partition)}
        return REGISTRY.get_sample_value("kappaflow_state_keys", labels)

    assert [shown(p) for p in range(4)] == [len(worker.runs[p].state) for p in range(4)]
    worker.own([0, 1])
    assert (shown(1), shown(2), shown(3)) == (len(worker.runs[1].state), None, None)


def test_a_ttl_must_be_positive_and_a_state_kept_otherwise_is_refused() -> None:
    with pytest.raises(AppError, match="ttl_s must be a positive number of seconds, got 0"):
        FunctionProcessor(lambda state, batch: {}, int, ttl_s=0)
    processor = FunctionProcessor(lambda state, batch: {}, int)
    with pytest.raises(AppError, match=r"stored state is not keyed .*move the store aside"):
        processor.decode(msgspec.msgpack.encode(["a list"]), {})
