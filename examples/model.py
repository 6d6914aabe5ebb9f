"""A prediction model in an asyncio service: emits its predictions, their outcomes and its errors through tickbus.

Run: python examples/model.py
"""

import argparse
import asyncio
import random
import time

from producers import AsyncEmitter, EmitterSettings
from schemas import Error, Prediction
from schemas.wire import DEFAULT_AMQP_URL, DEFAULT_EXCHANGE

MODEL, VERSION = "direction-gbm", "2024.06"


async def serve(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    settings = EmitterSettings(source=args.source, url=args.url, exchange=args.exchange, version=VERSION)
    async with AsyncEmitter(settings) as emitter:  # drains and says goodbye on the way out
        deadline = time.monotonic() + args.duration
        pending: list[tuple[str, bool]] = []  # (decision, whether it will turn out right)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            if rng.random() < 0.02:
                emitter.emit(Error(ts=time.time(), source=args.source, component="features", error_type="StaleQuote",
                                   severity="warning", symbol="BTCUSDT",
                                   message="quote older than 2s; skipped"))  # fmt: skip
            else:
                probability = rng.betavariate(5, 4)
                decision = "up" if probability >= 0.5 else "down"
                emitter.emit(Prediction(ts=time.time(), source=args.source, model=MODEL, model_version=VERSION,
                                        symbol="BTCUSDT", decision=decision, probability=probability,
                                        expected_profit=rng.gauss(0.5, 2.0),
                                        latency=time.perf_counter() - started + rng.uniform(0.001, 0.01)))  # fmt: skip
                pending.append((decision, rng.random() < probability))
            if len(pending) > 5:  # the market told us how an earlier prediction did
                decision, correct = pending.pop(0)
                emitter.emit(Prediction(ts=time.time(), source=args.source, model=MODEL, model_version=VERSION,
                                        symbol="BTCUSDT", decision=decision, correct=correct))  # fmt: skip
            await asyncio.sleep(1 / args.rate)
    print(f"{args.source}: done ({emitter.dropped} dropped)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    parser.add_argument("--exchange", default=DEFAULT_EXCHANGE, help="the aggregator's exchange")
    parser.add_argument("--source", default="model-1", help="this component's name (the `source` label)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--rate", type=float, default=20.0, help="predictions per second")
    parser.add_argument("--seed", type=int, default=3)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
