"""Broker topology a test sets up by hand: an exchange as the aggregator would declare it, with no queue bound."""

import asyncio

import aio_pika

from tests.support.process import AMQP_URL


async def _declare_exchange(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


def declare_exchange(name: str) -> None:
    """Declare the topic exchange `name` (durable, as the aggregator does) and bind nothing to it."""
    asyncio.run(_declare_exchange(name))
