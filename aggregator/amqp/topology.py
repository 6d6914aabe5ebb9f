"""Declaring the exchange, queue, dead-letter path and shard exchange the aggregator consumes through, idempotently."""

from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from aggregator.config import AmqpSettings, ShardSettings
from schemas.wire import HEADER_SOURCE

# RabbitMQ's consistent-hash exchange (a plugin that ships with the broker, off by default).
SHARD_EXCHANGE_TYPE = "x-consistent-hash"
SHARD_PLUGIN = "rabbitmq_consistent_hash_exchange"
# The plugin hashes on a header or on one of message_id, correlation_id and timestamp (3.10 refuses app_id): the
# source goes in a header of its own.
SHARD_EXCHANGE_ARGUMENTS: dict[str, Any] = {"hash-header": HEADER_SOURCE}


class TopologyError(RuntimeError):
    """The broker already has an exchange or queue of this name declared differently."""


@dataclass
class Topology:
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_exchange: AbstractExchange
    dead_letter_queue: AbstractQueue
    # With [shard] enabled: the consistent-hash exchange the queue is bound to.
    shard_exchange: AbstractExchange | None = None


def queue_arguments(amqp: AmqpSettings) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-dead-letter-exchange": amqp.dead_letter_exchange_name}
    if amqp.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        arguments["x-delivery-limit"] = amqp.delivery_limit
    if amqp.single_active_consumer:
        arguments["x-single-active-consumer"] = True
    return arguments


async def declare_topology(
    channel: AbstractChannel, amqp: AmqpSettings, shard: ShardSettings | None = None
) -> Topology:
    """Declare everything; redeclaring what exists with the same arguments is a no-op.

    Sharded, the queue is bound to the consistent-hash exchange with its weight, that exchange to the metrics
    exchange with the binding keys, and any direct binding of the queue to the metrics exchange (from before it
    was sharded) is removed: the queue then gets only its share, never a second copy.
    """
    shard_exchange: AbstractExchange | None = None
    what = f"exchange {amqp.exchange!r}"
    try:
        exchange = await channel.declare_exchange(amqp.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        what = f"exchange {amqp.dead_letter_exchange_name!r}"
        dead_letter_exchange = await channel.declare_exchange(
            amqp.dead_letter_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        what = f"queue {amqp.dead_letter_queue_name!r}"
        dead_letter_queue = await channel.declare_queue(
            amqp.dead_letter_queue_name,
            durable=True,
            arguments={"x-queue-type": "quorum"} if amqp.dead_letter_queue_type == "quorum" else None,
        )
        await dead_letter_queue.bind(dead_letter_exchange, "#")
        what = f"queue {amqp.queue!r}"
        queue = await channel.declare_queue(amqp.queue, durable=True, arguments=queue_arguments(amqp))
        if shard is not None and shard.enabled:
            name = shard.exchange_name(amqp)
            what = f"shard exchange {name!r}"
            shard_exchange = await channel.declare_exchange(
                name, SHARD_EXCHANGE_TYPE, durable=True, arguments=SHARD_EXCHANGE_ARGUMENTS
            )
            for binding_key in amqp.binding_keys:
                await shard_exchange.bind(exchange, binding_key)
                await queue.unbind(exchange, binding_key)
            await queue.bind(shard_exchange, str(shard.weight))
        else:
            for binding_key in amqp.binding_keys:
                await queue.bind(exchange, binding_key)
    except aiormq.exceptions.ConnectionCommandInvalid as error:
        if shard_exchange is None and what.startswith("shard ") and "exchange type" in str(error):
            raise TopologyError(
                f"RabbitMQ cannot declare the {what} of type {SHARD_EXCHANGE_TYPE} ({error.args[0]}): enable "
                f"the {SHARD_PLUGIN} plugin on every broker node (scripts/rabbitmq-shard-plugin), or turn "
                f"shard.enabled off"
            ) from None
        raise
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise TopologyError(
            f"{what} already exists on the broker with different settings ({error.args[0]}). "
            f"Either point the aggregator at a new name (amqp.queue / amqp.exchange in the config, "
            f"or --queue / --exchange), or match its settings (amqp.queue_type, amqp.dead_letter_queue_type), or "
            f"delete it with "
            f"`rabbitmqctl delete_queue NAME` after draining it (its messages are lost)."
        ) from None
    return Topology(exchange, queue, dead_letter_exchange, dead_letter_queue, shard_exchange)


async def leave_shard(channel: AbstractChannel, amqp: AmqpSettings, shard: ShardSettings) -> None:
    """Unbind the queue from the shard exchange: its sources go to the other queues from the next message on."""
    exchange = await channel.get_exchange(shard.exchange_name(amqp), ensure=True)
    queue = await channel.get_queue(amqp.queue, ensure=True)
    await queue.unbind(exchange, str(shard.weight))


async def ready_messages(channel: AbstractChannel, queue_name: str) -> int:
    """Messages waiting in the queue, not yet delivered (a passive declare; unacked deliveries are not counted)."""
    queue = await channel.declare_queue(queue_name, passive=True)
    return int(queue.declaration_result.message_count or 0)
