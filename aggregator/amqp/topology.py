"""Declaring the exchange, queue and dead-letter path the aggregator consumes through, idempotently."""

from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from aggregator.config import AmqpSettings


class TopologyError(RuntimeError):
    """The broker already has an exchange or queue of this name declared differently."""


@dataclass
class Topology:
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_exchange: AbstractExchange
    dead_letter_queue: AbstractQueue


def queue_arguments(amqp: AmqpSettings) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-dead-letter-exchange": amqp.dead_letter_exchange_name}
    if amqp.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        arguments["x-delivery-limit"] = amqp.delivery_limit
    if amqp.single_active_consumer:
        arguments["x-single-active-consumer"] = True
    return arguments


async def declare_topology(channel: AbstractChannel, amqp: AmqpSettings) -> Topology:
    """Declare everything; redeclaring what exists with the same arguments is a no-op."""
    what = f"exchange {amqp.exchange!r}"
    try:
        exchange = await channel.declare_exchange(amqp.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        what = f"exchange {amqp.dead_letter_exchange_name!r}"
        dead_letter_exchange = await channel.declare_exchange(
            amqp.dead_letter_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        what = f"queue {amqp.dead_letter_queue_name!r}"
        dead_letter_queue = await channel.declare_queue(amqp.dead_letter_queue_name, durable=True)
        await dead_letter_queue.bind(dead_letter_exchange, "#")
        what = f"queue {amqp.queue!r}"
        queue = await channel.declare_queue(amqp.queue, durable=True, arguments=queue_arguments(amqp))
        for binding_key in amqp.binding_keys:
            await queue.bind(exchange, binding_key)
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise TopologyError(
            f"{what} already exists on the broker with different settings ({error.args[0]}). "
            f"Either point the aggregator at a new name (amqp.queue / amqp.exchange in the config, "
            f"or --queue / --exchange), or match its settings (amqp.queue_type), or delete it with "
            f"`rabbitmqctl delete_queue NAME` after draining it (its messages are lost)."
        ) from None
    return Topology(exchange, queue, dead_letter_exchange, dead_letter_queue)
