"""The compiled counter totals behave as a dict of label keys to floats, order included, under any changes."""

import pickle
import threading
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aggregator._totals import Totals

# Few distinct values, so that keys collide, repeat and are deleted often; tuples of several widths.
_VALUES = st.sampled_from(["", "a", "b", "SYM1", "strategy-7", "é", 0, 1, 2.5, True, None])
_KEYS = st.lists(_VALUES, min_size=0, max_size=3).map(tuple)
_AMOUNTS = st.floats(allow_nan=False, allow_infinity=False, width=32)


class TotalsAgainstDict(RuleBasedStateMachine):
    """Every operation is done on a Totals and on a dict; they must always hold the same series."""

    def __init__(self) -> None:
        super().__init__()
        self.totals = Totals()
        self.model: dict[Any, float] = {}

    @rule(key=_KEYS, value=_AMOUNTS)
    def set(self, key: tuple[Any, ...], value: float) -> None:
        self.totals[key] = value
        self.model[key] = value

    @rule(key=_KEYS, value=_AMOUNTS)
    def add(self, key: tuple[Any, ...], value: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + value
        self.model[key] = self.model.get(key, 0.0) + value

    @rule(key=_KEYS)
    def pop(self, key: tuple[Any, ...]) -> None:
        assert self.totals.pop(key, None) == self.model.pop(key, None)

    @rule(key=_KEYS)
    def delete(self, key: tuple[Any, ...]) -> None:
        if key in self.model:
            del self.totals[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.totals[key]

    @rule(count=st.integers(min_value=0, max_value=300))
    def fill(self, count: int) -> None:
        """Many keys at once: the table grows several times."""
        pairs = [(("fill", f"k{index}"), float(index)) for index in range(count)]
        self.totals.update(pairs)
        self.model.update(pairs)

    @rule()
    def clear(self) -> None:
        self.totals.clear()
        self.model.clear()

    @invariant()
    def same_series(self) -> None:
        assert len(self.totals) == len(self.model)
        assert dict(self.totals.items()) == self.model
        assert list(self.totals) == list(self.model)  # insertion order, as a dict keeps it
        assert list(self.totals.values()) == list(self.model.values())
        assert self.totals == self.model
        for key, value in self.model.items():
            assert key in self.totals
            assert self.totals[key] == value


TotalsAgainstDict.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_totals_behave_as_a_dict = TotalsAgainstDict.TestCase


def test_deleting_from_a_crowded_table_keeps_every_other_key_reachable() -> None:
    """Deleting keys from long probe runs (100,000 keys, every third one deleted) leaves the rest found, with their
    values, and the deleted ones gone."""
    totals = Totals()
    keys = [("d", str(index)) for index in range(100_000)]
    for index, key in enumerate(keys):
        totals[key] = float(index)
    for key in keys[::3]:
        del totals[key]
    kept = {key: float(index) for index, key in enumerate(keys) if index % 3}
    assert len(totals) == len(kept)
    assert all(totals.get(key) == value for key, value in kept.items())
    assert not any(key in totals for key in keys[::3])


def test_keys_that_could_run_python_code_are_refused_and_never_found() -> None:
    """Only tuples of plain values go in (no Python __eq__ or __hash__ can run inside the table); any other key
    is a TypeError on writing and simply absent on reading."""

    class Label(str):
        pass

    totals = Totals()
    with pytest.raises(TypeError, match="a series key must be a tuple"):
        totals[(Label("x"),)] = 1.0
    with pytest.raises(TypeError, match="a series key must be a tuple"):
        totals[["x"]] = 1.0  # type: ignore[index]
    totals[("x",)] = 1.0
    assert (Label("x"),) not in totals
    assert totals.get(["x"]) is None  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        totals[("x",)] = "one"  # type: ignore[assignment]


def test_the_rest_of_a_dicts_interface_behaves_as_a_dicts() -> None:
    """setdefault, popitem (newest first), copy and pop's default: what code written for a dict of totals calls."""
    totals = Totals({("a",): 1.0, ("b",): 2.0})
    assert totals.setdefault(("a",), 5.0) == 1.0
    assert totals.setdefault(("c",)) == 0.0
    copy = totals.copy()
    assert copy == totals
    assert copy is not totals
    assert totals.popitem() == (("c",), 0.0)
    assert totals.pop(("zz",), None) is None
    with pytest.raises(TypeError):
        totals.pop(("a",), 1, 2)  # type: ignore[call-overload]
    del totals[("b",)]
    assert totals.popitem() == (("a",), 1.0)
    with pytest.raises(KeyError):
        totals.popitem()
    assert copy == {("a",): 1.0, ("b",): 2.0, ("c",): 0.0}


def test_a_table_pickles_and_compares_as_its_series() -> None:
    """A pickled table comes back with the same series; it equals a dict of them and not a different one."""
    totals = Totals({("a", "b"): 1.5, (): 2.0})
    copy = pickle.loads(pickle.dumps(totals))
    assert copy == {("a", "b"): 1.5, (): 2.0}
    assert copy != {("a", "b"): 1.5}
    assert "Totals(" in repr(copy)


def test_a_reader_thread_sees_whole_tables_while_the_writer_grows_and_shrinks_them() -> None:
    """A thread listing items while another adds and deletes series (growing the table many times) always gets
    pairs whose values belong to their keys, never a crash or a half-moved table."""
    totals = Totals()
    stop = threading.Event()
    bad: list[Any] = []

    def read() -> None:
        while not stop.is_set():
            for key, value in totals.items():
                if value != float(key[1]):
                    bad.append((key, value))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(20):
            for index in range(5_000):
                totals[("r", index)] = float(index)
            for index in range(0, 5_000, 2 + round_ % 3):
                del totals[("r", index)]
    finally:
        stop.set()
        reader.join()
    assert bad == []
    assert len(totals) > 0
