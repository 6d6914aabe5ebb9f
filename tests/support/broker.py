"""Talking to the real RabbitMQ from tests: raw publishes, reading dead letters, closing a node's connections."""

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aio_pika

from aggregator.statestream import stream_name
from tests.support.process import AMQP_URL, Names

if TYPE_CHECKING:  # imported for the annotations only, so pytest can register rabbitnodes as a plugin first
    from tests.support.rabbitnodes import PrivateNode


@dataclass
class RawMessage:
    body: bytes
    routing_key: str
    content_type: str | None = "application/json"
    message_id: str | None = None


async def _publish(exchange_name: str, messages: list[RawMessage]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        for message in messages:
            await exchange.publish(
                aio_pika.Message(message.body, content_type=message.content_type, message_id=message.message_id),
                routing_key=message.routing_key,
            )


def publish_raw(exchange_name: str, messages: list[RawMessage]) -> None:
    """Publish bodies exactly as given, in order, with confirms."""
    asyncio.run(_publish(exchange_name, messages))


async def _drain(queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(AMQP_URL)
    got = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            got.append(message)
    return got


def drain(queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message now in the queue."""
    return asyncio.run(_drain(queue_name))


async def _queue_depth(queue_name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)


def queue_depth(queue_name: str) -> int:
    """Messages ready in the queue now."""
    return asyncio.run(_queue_depth(queue_name))


def connection_pids(node: "PrivateNode", name_prefix: str) -> list[str]:
    """Erlang pids of `node`'s connections whose client-given name starts with `name_prefix`."""
    pids = []
    for line in node.rabbitmqctl("list_connections", "pid", "client_properties").splitlines()[1:]:
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name_prefix}' in properties:
            pids.append(pid)
    return pids


def close_connections(node: "PrivateNode", name_prefix: str) -> int:
    """Close, from `node`'s side, every connection whose name starts with `name_prefix`."""
    pids = connection_pids(node, name_prefix)
    for pid in pids:
        node.rabbitmqctl("close_connection", pid, "closed by a tickbus test")
    return len(pids)


async def _delete_topology(names: Names) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (names.queue, names.dead_letter_queue, stream_name(names.queue)):
            await channel.queue_delete(queue)
        for exchange in (names.exchange, f"{names.exchange}.dead", f"{names.exchange}.unbound"):
            await channel.exchange_delete(exchange)


def delete_topology(names: Names) -> None:
    """Delete a test's exchanges and queues, its state stream too (deleting what does not exist is fine), so the
    broker is left clean."""
    asyncio.run(_delete_topology(names))
