"""An order executor that emits order states, fills, trades, venue calls and its portfolio through tickbus.

Run: python examples/executor.py
"""

import argparse
import random
import time
from typing import Literal

from producers import Emitter, EmitterSettings
from schemas import Dependency, Order, Portfolio, Trade
from schemas.wire import DEFAULT_AMQP_URL, DEFAULT_EXCHANGE

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    parser.add_argument("--exchange", default=DEFAULT_EXCHANGE, help="the aggregator's exchange")
    parser.add_argument("--source", default="executor-1", help="this component's name (the `source` label)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--orders", type=float, default=10.0, help="orders per second")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    emitter = Emitter(EmitterSettings(source=args.source, url=args.url, exchange=args.exchange, version="2.0.0"))
    equity, peak, realized = 100_000.0, 100_000.0, 0.0
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        symbol = rng.choice(SYMBOLS)
        side: Literal["buy", "sell"] = rng.choice(("buy", "sell"))
        quantity, price = round(rng.uniform(0.1, 2.0), 3), rng.uniform(90, 110)
        common = {"ts": time.time(), "source": args.source, "symbol": symbol, "side": side, "venue": "binance",
                  "strategy": "momentum", "quantity": quantity, "price": price}  # fmt: skip
        emitter.emit(Order(**common, status="placed"))
        # The venue's API call, as a dependency: its latency and outcome feed the dependency dashboards.
        latency = rng.lognormvariate(-4.5, 0.5)
        ok = rng.random() > 0.05
        emitter.emit(Dependency(ts=time.time(), source=args.source, dependency="binance", operation="new_order",
                                outcome="ok" if ok else "timeout", up=ok, latency=latency))  # fmt: skip
        if not ok:
            emitter.emit(Order(**common, status="rejected", reason="venue_timeout", latency=latency))
        else:
            emitter.emit(Order(**common, status="filled", latency=latency, slippage_bps=rng.gauss(1.0, 0.8)))
            pnl = rng.gauss(2.0, 20.0)
            realized += pnl
            equity += pnl
            peak = max(peak, equity)
            emitter.emit(Trade(ts=time.time(), source=args.source, symbol=symbol, side=side, pnl=pnl,
                               strategy="momentum", quantity=quantity, holding_time=rng.uniform(1, 600)))  # fmt: skip
            emitter.emit(Portfolio(ts=time.time(), source=args.source, account="main", equity=equity,
                                   realized_pnl=realized, daily_pnl=realized,
                                   drawdown=(peak - equity) / peak))  # fmt: skip
        time.sleep(1 / args.orders)
    delivered = emitter.close()
    print(f"{args.source}: done ({'all delivered' if delivered else 'some events not delivered'}, "
          f"{emitter.dropped} dropped)")  # fmt: skip


if __name__ == "__main__":
    main()
