"""A momentum strategy that emits its signals and positions through tickbus (run: python examples/strategy.py)."""

import argparse
import random
import time
from collections import deque
from typing import Literal

from producers import Emitter, EmitterSettings
from schemas import Position, Signal
from schemas.wire import DEFAULT_AMQP_URL, DEFAULT_EXCHANGE

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
WINDOW = 20  # ticks in the moving average


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    parser.add_argument("--exchange", default=DEFAULT_EXCHANGE, help="the aggregator's exchange")
    parser.add_argument("--source", default="momentum-1", help="this component's name (the `source` label)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--ticks", type=float, default=20.0, help="price ticks per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    prices = dict.fromkeys(SYMBOLS, 100.0)
    history: dict[str, deque[float]] = {symbol: deque(maxlen=WINDOW) for symbol in SYMBOLS}
    positions = dict.fromkeys(SYMBOLS, 0.0)
    # One emitter per process: emit() never blocks and never raises when the broker is slow or away.
    emitter = Emitter(EmitterSettings(source=args.source, url=args.url, exchange=args.exchange, version="1.4.2"))
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        for symbol in SYMBOLS:
            started = time.perf_counter()
            prices[symbol] *= 1 + rng.gauss(0, 0.002)
            history[symbol].append(prices[symbol])
            if len(history[symbol]) < WINDOW:
                continue
            average = sum(history[symbol]) / len(history[symbol])
            momentum = prices[symbol] / average - 1
            if abs(momentum) < 0.002:
                continue
            side: Literal["buy", "sell"] = "buy" if momentum > 0 else "sell"
            confidence = min(1.0, abs(momentum) * 100)
            outcome: Literal["accepted", "rejected"] = "accepted" if confidence > 0.5 else "rejected"
            emitter.emit(Signal(ts=time.time(), source=args.source, strategy="momentum", symbol=symbol, side=side,
                                outcome=outcome, reason="" if outcome == "accepted" else "low_confidence",
                                confidence=confidence, latency=time.perf_counter() - started))  # fmt: skip
            if outcome == "accepted":
                positions[symbol] += 1.0 if side == "buy" else -1.0
                emitter.emit(Position(ts=time.time(), source=args.source, symbol=symbol, quantity=positions[symbol],
                                      strategy="momentum", avg_price=prices[symbol],
                                      market_value=positions[symbol] * prices[symbol]))  # fmt: skip
        time.sleep(1 / args.ticks)
    delivered = emitter.close()  # drains what is buffered, sends a last heartbeat
    print(f"{args.source}: done ({'all delivered' if delivered else 'some events not delivered'}, "
          f"{emitter.dropped} dropped)")  # fmt: skip


if __name__ == "__main__":
    main()
