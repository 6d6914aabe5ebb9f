"""The compiled apply loop against the pure-Python update functions: the same events give the same series."""

import random
import time
from typing import Any

import pytest

from aggregator import _fastapply
from aggregator.config import CatalogSettings
from aggregator.ingest import Ingest
from benchmarks.harness import mixed_events
from schemas.events import Dependency, Error, Heartbeat, Order, Portfolio, Position, Prediction, Signal, Trade
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
    settings = CatalogSettings(max_series_per_metric=40)  # small: the overflow path runs too
    return make_ingest(settings, compiled=True), make_ingest(settings, compiled=False)


def _state(ingest: Ingest) -> tuple[dict[str, Any], dict[str, Any]]:
    families = ingest.store.families.values()
    return ingest.store.snapshot(), {family.name: sorted(map(repr, family.dirty)) for family in families}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_compiled_loop_and_the_update_functions_make_the_same_series(seed: int) -> None:
    """Random events of every kind, in batches, applied both ways: every series, total and time is equal."""
    compiled, pure = _pair()
    assert compiled.loop is not None
    assert pure.loop is None
    events = _events(random.Random(seed), 150)
    for start in range(0, len(events), 37):
        batch = events[start : start + 37]
        compiled.apply(batch, now=1_000_000.0 + start)
        pure.apply(batch, now=1_000_000.0 + start)
    assert _state(compiled) == _state(pure)


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
    assert _state(compiled) == _state(pure)


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
