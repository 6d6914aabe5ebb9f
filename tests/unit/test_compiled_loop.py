"""The compiled apply loop against the pure-Python update functions: the same events give the same series."""

import math
import random
import time
from typing import Any
from unittest import mock

import msgspec
import pytest

from aggregator import _fastapply, catalog
from aggregator.config import CatalogSettings
from aggregator.exemplars import carries_ids
from aggregator.ingest import Ingest, count_by_type_and_source, latest_ts
from aggregator.store import CounterFamily, share_key
from benchmarks.harness import mixed_events
from schemas.events import Dependency, Error, Heartbeat, Metric, Order, Portfolio, Position, Prediction, Signal, Trade
from schemas.labels import LabelCheck
from tests.support.engine import make_ingest
from tests.support.scenario import desk_events


def _events(rng: random.Random, count: int) -> list[Any]:
    now = 1_000_000.0
    symbols = ["BTC", "ETH", "SOL", 'Q"X', ""]
    events: list[Any] = []
    for index in range(count):
        symbol = rng.choice(symbols) or "X"
        ts = now + rng.uniform(-50, 50)
        events += [
            Signal(ts=ts, source=rng.choice(["s1", "s2"]), strategy=rng.choice(["a", "b"]), symbol=symbol,
                   side=rng.choice(["buy", "sell"]), outcome=rng.choice(["generated", "accepted", "rejected"]),
                   confidence=rng.choice([None, rng.random()]), latency=rng.choice([None, rng.random() / 10])),
            Order(ts=ts, source="o", symbol=symbol, side=rng.choice(["buy", "sell"]),
                  status=rng.choice(["placed", "filled", "partially_filled", "cancelled", "rejected"]),
                  quantity=rng.choice([None, rng.random() * 10]), price=rng.choice([None, 100.0]),
                  slippage_bps=rng.choice([None, rng.uniform(-20, 60)]), latency=rng.choice([None, rng.random()])),
            Prediction(ts=ts, source="m", model="x", probability=rng.choice([None, rng.random()]),
                       expected_profit=rng.choice([None, rng.uniform(-0.1, 0.1)]),
                       correct=rng.choice([None, True, False]), latency=rng.random() / 100),
            Error(ts=ts, source="e", component="c", error_type=rng.choice(["t", "u"]), severity="error"),
            Position(ts=ts, source="p", symbol=symbol, quantity=rng.uniform(-5, 5), unrealized_pnl=rng.random()),
            Portfolio(ts=ts, source="p", equity=rng.random() * 1e6, drawdown=rng.random(), open_positions=index),
            Trade(ts=ts, source="t", symbol=symbol, side="buy", pnl=rng.uniform(-10, 10), holding_time=rng.random()),
            Heartbeat(ts=ts, source=rng.choice(["h1", "h2"]), instance=rng.choice(["i1", "i2"]),
                      dropped=index, cpu_seconds=float(index), resident_memory_bytes=index * 1000),
            Dependency(ts=ts, source="d", dependency="db", outcome=rng.choice(["ok", "error"]),
                       up=rng.choice([None, True, False]), latency=rng.random()),
        ]  # fmt: skip
    return events


def _pair() -> tuple[Ingest, Ingest]:
    """The compiled loop over the compiled counter totals; the pure loop over dicts, as without a C compiler."""
    settings = CatalogSettings(max_series_per_metric=40)  # small: the overflow path runs too
    compiled = make_ingest(settings, compiled=True)
    with mock.patch("aggregator.store.counter_totals", dict):
        pure = make_ingest(settings, compiled=False)
    return compiled, pure


def _state(ingest: Ingest) -> tuple[dict[str, Any], dict[str, Any]]:
    families = ingest.store.families.values()
    return ingest.store.snapshot(), {family.name: sorted(map(repr, family.dirty)) for family in families}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_compiled_loop_and_the_update_functions_make_the_same_series(seed: int) -> None:
    """Random events of every kind, in batches, applied both ways: every series, total and time is equal."""
    compiled, pure = _pair()
    assert compiled.loop is not None
    assert pure.loop is None
    counters = [name for name, family in pure.store.families.items() if isinstance(family, CounterFamily)]
    assert {type(compiled.store.families[name].series).__name__ for name in counters} == {"Totals"}
    assert {type(pure.store.families[name].series).__name__ for name in counters} == {"dict"}
    events = _events(random.Random(seed), 150)
    for start in range(0, len(events), 37):
        batch = events[start : start + 37]
        compiled.apply(batch, now=1_000_000.0 + start)
        pure.apply(batch, now=1_000_000.0 + start)
    assert _state(compiled) == _state(pure)
    for name, family in compiled.store.families.items():
        shared = pure.store.families[name]._shared
        assert [None if table is None else sorted(table) for table in family._shared] == [
            None if table is None else sorted(table) for table in shared
        ], name


def test_both_loops_keep_the_same_rows_for_a_commit_being_written() -> None:
    """With a commit point in the middle, both keep the same committed rows (copy on write) and dirty sets."""
    compiled, pure = _pair()
    events = _events(random.Random(9), 60)
    for ingest in (compiled, pure):
        ingest.apply(events[:200], now=1.0)
        for family in ingest.store.families.values():
            family.freeze()
        ingest.apply(events[200:], now=2.0)
    for name, family in compiled.store.families.items():
        other = pure.store.families[name]
        assert family.frozen.keys() == other.frozen.keys(), name
        assert {key: family.committed_row(key) for key in family.writing or ()} == {
            key: other.committed_row(key) for key in other.writing or ()
        }, name
        writing = list(family.writing or ())
        assert family.committed_rows(writing) == [other.committed_row(key) for key in writing], name
    assert _state(compiled) == _state(pure)


def test_a_total_read_out_of_the_store_keeps_its_value_while_the_compiled_loop_counts_on() -> None:
    """The compiled loop adds to a counter's total in place only while the store alone holds it.

    The rows a full checkpoint took and a total a reader holds keep what they read; the store counts every event.
    """
    compiled, _ = _pair()
    family = next(family for name, family in compiled.store.families.items() if name.endswith("errors_total"))
    burst = [Error(ts=1.0, source="e", component="c", error_type="t") for _ in range(5)]
    compiled.apply(burst, now=1.0)
    keys, rows = family.rows()
    (key,) = keys
    held = family.series[key]
    compiled.apply(burst, now=2.0)
    assert (rows, held) == ([5.0], 5.0)
    assert family.series[key] == 10.0
    del rows, held
    total = id(family.series[key])
    compiled.apply(burst, now=3.0)
    assert family.series[key] == 15.0
    assert id(family.series[key]) == total, "held by the store alone: added to in place"


def test_the_desk_scenario_and_the_benchmark_mix_agree() -> None:
    """The scenario every producer sends and the benchmark's mix: identical stores both ways."""
    compiled, pure = _pair()
    now = time.time()
    for events in (desk_events("d"), mixed_events(2_000)):
        compiled.apply(events, now)
        pure.apply(events, now)
    assert _state(compiled) == _state(pure)


def test_most_built_in_updates_run_compiled() -> None:
    """Only the updates that need Python (running totals, exclusive gauges) fall back to their functions."""
    ingest = make_ingest(compiled=True)
    assert ingest._plan is not None
    kinds = [_fastapply.compiled_kind(update) for updates in ingest._plan.values() for update in updates]
    assert kinds.count("python") <= 4
    assert len(kinds) - kinds.count("python") >= 40


def test_declared_derivations_run_in_the_compiled_loop_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Notional, slippage and expected-profit magnitudes and directions: no Python call per event when compiled,
    the same series as the pure path's calls (missing fields, zero, and both signs included)."""
    compiled, pure = _pair()
    events: list[Any] = []
    for quantity in (None, 0.0, 2.5):
        for price in (None, 100.0):
            for slippage in (None, -3.0, 0.0, 7.5):
                events.append(Order(ts=1.0, source="o", symbol="X", side="buy", status="filled", quantity=quantity,
                                    price=price, slippage_bps=slippage))  # fmt: skip
    events += [Prediction(ts=1.0, source="m", model="x", probability=0.5, expected_profit=profit)
               for profit in (None, -0.02, 0.0, 0.03)]  # fmt: skip
    calls: list[str] = []
    for kind in (catalog.Product, catalog.Magnitude, catalog.SignWord):
        real = kind.__call__

        def counted(self: Any, event: Any, real: Any = real) -> Any:
            calls.append(type(self).__name__)
            return real(self, event)

        monkeypatch.setattr(kind, "__call__", counted)
    compiled.apply(events, 1.0)
    assert calls == []
    pure.apply(events, 1.0)
    assert sorted(set(calls)) == ["Magnitude", "Product", "SignWord"]
    assert _state(compiled) == _state(pure)
    notional = compiled.store.families["trading_order_filled_notional_total"].series
    assert sum(notional.values()) == 4 * 250.0  # 2.5 x 100 for each of the four slippages
    directions = {key[-1] for key in compiled.store.families["trading_order_slippage_bps"].series}
    assert directions == {"favorable", "adverse"}


def test_key_sharing_is_the_same_compiled_and_in_python() -> None:
    """Random keys through both forms of share_key: the same keys, the same shared copies, the same tables."""
    rng = random.Random(5)
    compiled_tables: list[dict[str, str] | None] = [{}, {}, {}]
    python_tables: list[dict[str, str] | None] = [{}, {}, {}]
    for _ in range(3_000):
        key = (f"s{rng.randrange(3)}", f"v{rng.randrange(40)}", f"u{rng.randrange(10_000)}")
        ours = _fastapply.share_key(compiled_tables, tuple(part[:] for part in key), 25)
        theirs = share_key(python_tables, key, 25)
        assert ours == theirs
    assert [None if table is None else sorted(table) for table in compiled_tables] == [
        None if table is None else sorted(table) for table in python_tables
    ]
    assert compiled_tables[2] is None, "a label of unique values stops being shared at the limit"


@pytest.mark.parametrize("capacity", [5, 100_000])
def test_the_label_check_is_the_same_compiled_and_in_python(capacity: int) -> None:
    """Good and bad label values, below and past the cache's capacity: both forms find the same problems."""
    rng = random.Random(6)
    compiled_check = LabelCheck(capacity, check_values=_fastapply.check_values)
    python_check = LabelCheck(capacity)
    found = []
    for index in range(2_000):
        symbol = rng.choice(["BTC", "ETH", f"S{index}", "bad|symbol", "tab\there", "/api/{id}"])
        event = Signal(ts=1.0, source=rng.choice(["s1", "bad source"]), strategy="m", symbol=symbol, side="buy")
        problem = compiled_check.problem(event)
        assert problem == python_check.problem(event)
        found.append(problem is not None)
    assert any(found)
    assert not all(found)


@pytest.mark.parametrize("capacity", [5, 100_000])
def test_a_message_s_label_check_is_the_same_compiled_and_in_python(capacity: int) -> None:
    """Messages of mixed kinds, custom metrics with bad label names or values among them: the same verdicts."""
    rng = random.Random(8)
    compiled_check = LabelCheck(
        capacity, check_values=_fastapply.check_values, first_bad_event=_fastapply.first_bad_event
    )
    python_check = LabelCheck(capacity)
    verdicts = []
    for index in range(400):
        events: list[Any] = []
        for _ in range(rng.randint(1, 20)):
            symbol = rng.choice(["BTC", "ETH", f"S{index}", "bad|symbol", "/api/{id}"])
            events.append(
                rng.choice(
                    [
                        Signal(ts=1.0, source=rng.choice(["s1", "s 2"]), strategy="m", symbol=symbol, side="buy"),
                        Error(ts=1.0, source="s1", component="c", error_type="t", symbol=symbol),
                        Metric(ts=1.0, source="s1", name="m", value=1.0, labels={rng.choice(["ok", "0bad"]): symbol}),
                    ]
                )
            )
        verdict = compiled_check.all_valid(events)
        assert verdict == python_check.all_valid(events)
        assert verdict == all(python_check.problem(event) is None for event in events)
        verdicts.append(verdict)
    assert any(verdicts)
    assert not all(verdicts)


def test_the_compiled_message_check_puts_the_kept_copy_of_each_label_value_in_the_event() -> None:
    """Decoded twice, equal label text becomes one object (what the store's lookups then compare by identity).

    A value past the capacity is checked but not remembered, and stays the event's own; every event still
    equals what was decoded.
    """
    codec = msgspec.msgpack.Decoder(list[Error])
    body = msgspec.msgpack.encode([Error(ts=1.0, source="s1", component="feed", error_type="timeout", symbol="BTC")])
    check = LabelCheck(3, check_values=_fastapply.check_values, first_bad_event=_fastapply.first_bad_event)
    first, second = codec.decode(body), codec.decode(body)
    assert first[0].source is not second[0].source, "the decoder makes fresh strings"
    assert check.all_valid(first)
    assert check.all_valid(second)
    assert second == codec.decode(body)
    assert [second[0].source, second[0].component, second[0].error_type] == ["s1", "feed", "timeout"]
    assert second[0].source is first[0].source
    assert second[0].component is first[0].component
    sources = [Error(ts=1.0, source=f"s{index}", component="feed", error_type="timeout") for index in range(2, 6)]
    crowded = codec.decode(msgspec.msgpack.encode(sources))
    again = codec.decode(msgspec.msgpack.encode([Error(ts=1.0, source="s5", component="feed", error_type="timeout")]))
    assert check.all_valid(crowded)
    assert check.all_valid(again)
    assert again[0].source == "s5"
    assert again[0].source is not crowded[-1].source, "s5 came past the capacity of 3 sources: not remembered"
    assert again[0].component is first[0].component
    burst = codec.decode(
        msgspec.msgpack.encode(
            [Error(ts=1.0, source=source, component="feed", error_type=kind, symbol="BTC")
             for source, kind in [("s1", "timeout"), ("s1", "timeout"), ("s1", "reset"), ("s1", "timeout")]]
        )
    )  # fmt: skip
    assert check.all_valid(burst)
    assert all(event.source is first[0].source and event.symbol is first[0].symbol for event in burst)
    assert [event.error_type for event in burst] == ["timeout", "timeout", "reset", "timeout"]
    assert burst[3].error_type is burst[0].error_type is first[0].error_type


def test_a_message_s_tally_and_latest_time_are_the_same_compiled_and_in_python() -> None:
    """Events per (kind, source), sources interleaved or in runs, and the latest ts: both forms agree."""
    rng = random.Random(4)
    for size in (0, 1, 7, 300):
        events = _events(rng, size)[:size]
        rng.shuffle(events)
        if size == 300:
            events.sort(key=lambda event: (type(event).__name__, event.source))  # long runs of one pair
        assert list(_fastapply.count_by_type_and_source(events).items()) == list(
            count_by_type_and_source(events).items()
        )
        assert _fastapply.latest_ts(events) == latest_ts(events)
    assert _fastapply.latest_ts([]) == -math.inf


def test_whether_a_message_carries_exemplar_ids_is_the_same_compiled_and_in_python() -> None:
    """A trace id on any event, an order id on an order: both forms see it; a message without ids is passed over."""
    plain = [
        Signal(ts=1.0, source="s", strategy="m", symbol="X", side="buy"),
        Order(ts=1.0, source="o", symbol="X", side="buy", status="placed"),
    ]
    cases = [
        plain,
        [*plain, Error(ts=1.0, source="e", component="c", error_type="t", trace_id="t-1")],
        [*plain, Order(ts=1.0, source="o", symbol="X", side="buy", status="filled", order_id="o-1")],
        [],
    ]
    verdicts = [_fastapply.carries_ids(events, Order) for events in cases]
    assert verdicts == [carries_ids(events, Order) for events in cases] == [False, True, True, False]
