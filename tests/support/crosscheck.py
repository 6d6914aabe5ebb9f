"""The desk scenario through a producer in another language, compared with the Python emitter's run of it."""

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from producers.emitter import Emitter, EmitterSettings
from schemas.wire import HEADER_SOURCE
from tests.support.broker import drain
from tests.support.driver import ProducerDriver
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scenario import DESK_EVENTS, desk_events, desk_expected, missing_or_wrong
from tests.support.scrape import Samples, total, wait_for
from tests.support.tcpproxy import TcpProxy

MESSAGE_ID = re.compile(r"(?P<instance>[0-9a-f]{12})-(?P<sequence>[0-9]+)")
MESSAGE_ID = re.compile(r"(?P<instance>[0-9a-f]{12})-(?P<sequence>[0-9]+)")
SourceSamples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def desk_raw(now: float) -> list[dict[str, Any]]:
    """The scenario's events as plain JSON objects (no source), `ts` turned from seconds-ago into epoch seconds."""
    raw: list[dict[str, Any]] = json.loads(DESK_EVENTS.read_text())["events"]
    return [{**event, "ts": now - event["ts"]} for event in raw]


def send_python_reference(names: Names, source: str, now: float) -> None:
    """The scenario through the Python emitter, at the same `now`, so every value (timestamps too) can match."""
    settings = EmitterSettings(source=source, url=AMQP_URL, exchange=names.exchange, heartbeat_interval=0)
    with Emitter(settings) as emitter:
        for event in desk_events(source, now):
            assert emitter.emit(event)
        assert emitter.flush(10)


def by_source(samples: Samples, source: str) -> SourceSamples:
    """Every sample labelled with `source`, keyed without that label, so two sources' runs compare directly."""
    picked: SourceSamples = {}
    for (name, labels), sample_value in samples.items():
        if ("source", source) in labels:
            picked[(name, labels - {("source", source)})] = sample_value
    return picked


def assert_same_as_python(aggregator: AggregatorProcess, source: str, reference: str) -> SourceSamples:
    """The producer's samples hold the desk's expected values and equal the Python run's, sample for sample."""
    expected = {**desk_expected(source), **desk_expected(reference)}

    def settled() -> bool:
        return not missing_or_wrong(aggregator.scrape(), expected)

    try:
        wait_for(settled, timeout=20, what=f"the desk scenario from {source} and {reference}")
    except AssertionError:
        assert missing_or_wrong(aggregator.scrape(), expected) == {}
    time.sleep(0.3)  # anything extra (a duplicate, a stray event) would land by now
    samples = aggregator.scrape()
    produced, python = by_source(samples, source), by_source(samples, reference)
    assert produced == python, {
        "only or different in " + source: {k: v for k, v in produced.items() if python.get(k) != v},
        "only or different in " + reference: {k: v for k, v in python.items() if produced.get(k) != v},
    }
    return produced


async def _open_tap(exchange: str, queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        tap = await channel.declare_queue(queue, durable=True)
        await tap.bind(declared, "#")


async def _close_tap(queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


class Tap:
    """A queue of the test's own, bound to the exchange with `#`: a copy of every message as the broker got it."""

    def __init__(self, names: Names) -> None:
        self.exchange = names.exchange
        self.queue = f"{names.queue}.tap"

    def __enter__(self) -> "Tap":
        asyncio.run(_open_tap(self.exchange, self.queue))
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run(_close_tap(self.queue))

    def messages(self) -> list[AbstractIncomingMessage]:
        return drain(self.queue)


def assert_producer_properties(messages: list[AbstractIncomingMessage], source: str) -> list[int]:
    """Every message is persistent JSON from `source` (app_id and the x-tickbus-source header that shards route on)
    with a timestamp and an `<instance>-<seq>` id; the seqs."""
    assert messages
    instances, sequences = set(), []
    for message in messages:
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert message.app_id == source
        assert (message.headers or {}).get(HEADER_SOURCE) == source
        assert message.timestamp is not None
        assert abs(message.timestamp.timestamp() - time.time()) < 120
        match = MESSAGE_ID.fullmatch(message.message_id or "")
        assert match, message.message_id
        instances.add(match["instance"])
        sequences.append(int(match["sequence"]))
    assert len(instances) == 1
    return sequences


def assert_rides_out_an_outage(
    command: list[str], names: Names, aggregator: AggregatorProcess, source: str, stderr: Path
) -> None:
    """Drive a producer (its test driver `command` + JSON options) through a broker outage behind a proxy:
    emit still returns at once while the broker is away, nothing confirms, and once it is back every
    event arrives exactly once."""
    with TcpProxy() as proxy:
        options = {"source": source, "url": proxy.url, "exchange": names.exchange, "heartbeatIntervalMs": 0,
                   "retryMaxMs": 200}  # fmt: skip
        driver = ProducerDriver([*command, json.dumps(options)], stderr)
        try:
            errors = [{"kind": "error", "component": "feed", "error_type": "gap"} for _ in range(50)]
            assert driver.send("emit", events=errors)["took"] == 50
            assert driver.send("flush", timeout_ms=10_000)["ok"]

            proxy.down()
            during = driver.send("emit", events=errors)
            assert during["took"] == 50
            assert during["emit_ms"] < 50, during
            wait_for(lambda: driver.send("stats")["last_error"], timeout=10, what="the producer to notice")
            assert driver.send("flush", timeout_ms=500)["ok"] is False

            proxy.up()
            after = driver.send("flush", timeout_ms=15_000)
            assert after["ok"], after
            assert after["last_error"] == ""
            assert driver.send("close", timeout_ms=5_000)["ok"]
        finally:
            driver.stop()
    assert proxy.connections >= 2
    wait_for(lambda: total(aggregator.scrape(), "trading_errors_total", source=source) == 100, what="100")
    time.sleep(0.3)
    assert total(aggregator.scrape(), "trading_errors_total", source=source) == 100
    assert "cannot publish to RabbitMQ" in driver.stderr()
