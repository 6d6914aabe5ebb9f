"""Least privilege, authenticated sources and the bounded dead-letter queue, on a private TLS node whose users and
permissions scripts/rabbitmq-access made: each control is exercised so that the test fails if it is removed."""

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel

from aggregator.amqp.topology import declare_topology
from aggregator.config import AmqpSettings
from tests.support.process import AggregatorProcess
from tests.support.scrape import total, value, wait_for
from tests.support.secured import SecuredBroker

StartAggregator = Callable[..., AggregatorProcess]
ChannelAction = Callable[[AbstractChannel], Awaitable[object]]


def _signal(source: str) -> bytes:
    event = {"kind": "signal", "ts": time.time(), "source": source, "strategy": "s", "symbol": "X", "side": "buy"}
    return json.dumps(event).encode()


async def _as(broker: SecuredBroker, role: str, action: ChannelAction) -> BaseException | None:
    """Run `action` on a fresh confirm channel of `role`'s TLS connection; the error it raised, or None."""
    connection = await aio_pika.connect(broker.url(role, password=True), ssl_context=broker.context(), timeout=15)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await action(channel)
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as error:
            return error
    return None


def _attempt(broker: SecuredBroker, role: str, action: ChannelAction) -> BaseException | None:
    return asyncio.run(_as(broker, role, action))


def _settings(broker: SecuredBroker) -> AmqpSettings:
    return AmqpSettings(url=broker.url("aggregator", password=True), exchange=broker.names.exchange,
                        queue=broker.names.queue)  # fmt: skip


def _publish(exchange: str, routing_key: str, body: bytes = b"{}", **properties: object) -> ChannelAction:
    async def action(channel: AbstractChannel) -> object:
        target = await channel.get_exchange(exchange, ensure=False) if exchange else channel.default_exchange
        return await target.publish(
            aio_pika.Message(body, content_type="application/json", **properties),  # type: ignore[arg-type]
            routing_key=routing_key,
            mandatory=True,
        )

    return action


def _declare_topology(broker: SecuredBroker) -> ChannelAction:
    async def action(channel: AbstractChannel) -> object:
        return await declare_topology(channel, _settings(broker))

    return action


def _refused(error: BaseException | None) -> str:
    assert isinstance(error, aiormq.exceptions.ChannelAccessRefused), repr(error)
    return str(error.args[0])


def test_a_producer_may_publish_to_the_exchange_under_its_routing_keys_and_nothing_else(
    secured_broker: SecuredBroker,
) -> None:
    """The producer user publishes a signal (routed to the aggregator's queue); it is refused when it consumes or
    gets from the queue or the dead letters, publishes elsewhere (the dead-letter exchange, the default exchange,
    a routing key not in the wire format), deletes or purges the queue, declares anything, or binds."""
    broker, names = secured_broker, secured_broker.names
    assert _attempt(broker, "aggregator", _declare_topology(broker)) is None
    assert _attempt(broker, "producer-a", _publish(names.exchange, "signal", _signal("a-1"))) is None
    assert broker.queue_length(names.queue) == 1

    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    async def consume(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(names.queue, ensure=False)
        return await queue.consume(ignore)

    def get(queue: str) -> ChannelAction:
        async def action(channel: AbstractChannel) -> object:
            return await (await channel.get_queue(queue, ensure=False)).get(fail=False)

        return action

    async def delete(channel: AbstractChannel) -> object:
        return await channel.queue_delete(names.queue)

    async def purge(channel: AbstractChannel) -> object:
        return await (await channel.get_queue(names.queue, ensure=False)).purge()

    async def declare_queue(channel: AbstractChannel) -> object:
        return await channel.declare_queue(f"{names.queue}.mine", durable=True)

    async def declare_exchange(channel: AbstractChannel) -> object:
        return await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)

    async def bind(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(names.queue, ensure=False)
        return await queue.bind(names.exchange, "#")

    attempts: dict[str, ChannelAction] = {
        "consume the queue": consume,
        "get from the queue": get(names.queue),
        "get a dead letter": get(names.dead_letter_queue),
        "publish to the dead-letter exchange": _publish(f"{names.exchange}.dead", "signal"),
        "publish to the default exchange": _publish("", names.queue),
        "publish under another routing key": _publish(names.exchange, "anything"),
        "delete the queue": delete,
        "purge the queue": purge,
        "declare a queue": declare_queue,
        "declare the exchange": declare_exchange,
        "bind the queue": bind,
    }
    refusals = {what: _attempt(broker, "producer-a", action) for what, action in attempts.items()}
    for what, error in refusals.items():
        assert "ACCESS_REFUSED" in _refused(error), what
    assert "access to topic 'anything'" in _refused(refusals["publish under another routing key"])
    # Nothing the refused attempts tried took effect: the signal still waits in the queue.
    assert broker.queue_length(names.queue) == 1


def test_the_aggregator_and_the_operator_have_their_part_only(secured_broker: SecuredBroker) -> None:
    """The aggregator user declares its topology and dead-letters, but cannot publish events (it could forge any
    source) nor touch other names; the operator reads and replays dead letters but cannot consume the queue."""
    broker, names = secured_broker, secured_broker.names
    assert _attempt(broker, "aggregator", _declare_topology(broker)) is None
    assert _attempt(broker, "aggregator", _publish(f"{names.exchange}.dead", "malformed", b"{")) is None
    assert "ACCESS_REFUSED" in _refused(_attempt(broker, "aggregator", _publish(names.exchange, "signal")))

    async def other_queue(channel: AbstractChannel) -> object:
        return await channel.declare_queue(f"other.{uuid.uuid4().hex[:6]}", durable=True)

    assert "ACCESS_REFUSED" in _refused(_attempt(broker, "aggregator", other_queue))

    async def take_dead_letter(channel: AbstractChannel) -> object:
        message = await (await channel.get_queue(names.dead_letter_queue, ensure=False)).get(fail=False)
        assert message is not None
        await message.ack()
        return message

    assert _attempt(broker, "operator", take_dead_letter) is None

    async def consume(channel: AbstractChannel) -> object:
        return await (await channel.get_queue(names.queue, ensure=False)).get(fail=False)

    assert "ACCESS_REFUSED" in _refused(_attempt(broker, "operator", consume))


def test_the_broker_refuses_a_user_id_that_is_not_the_publisher(secured_broker: SecuredBroker) -> None:
    """Producer A cannot pass itself off as producer B: RabbitMQ closes the channel on a foreign user_id."""
    broker, names = secured_broker, secured_broker.names
    assert _attempt(broker, "aggregator", _declare_topology(broker)) is None
    error = _attempt(broker, "producer-a", _publish(names.exchange, "signal", user_id=broker.user("producer-b")))
    assert isinstance(error, aiormq.exceptions.ChannelPreconditionFailed), repr(error)
    assert f"user_id property set to '{broker.user('producer-b')}'" in str(error.args[0])
    assert broker.queue_length(names.queue) == 0


def _emit(broker: SecuredBroker, role: str, source: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "aggregator", "emit", "heartbeat", "--source", source,
        *broker.amqp_args(role), "--exchange", broker.names.exchange,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_authenticated_sources_with_two_producer_users(
    secured_broker: SecuredBroker, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With source_auth on, each producer user's own sources apply; producer A sending under B's source, and a
    message without user_id, are dead-lettered as source_not_allowed, naming the user."""
    broker = secured_broker
    config = tmp_path / "tickbus.toml"
    config.write_text(
        "[source_auth]\nenabled = true\n[source_auth.users]\n"
        f'"{broker.user("producer-a")}" = ["alpha-*"]\n"{broker.user("producer-b")}" = ["bravo-*"]\n'
    )
    args = broker.amqp_args("aggregator")
    aggregator = start_aggregator(broker.names, config=config, extra_args=args[2:], amqp_url=args[1])
    for role, source in (("producer-a", "alpha-1"), ("producer-b", "bravo-1"), ("producer-a", "bravo-2")):
        sent = _emit(broker, role, source)
        assert sent.returncode == 0, sent.stderr
    assert _attempt(broker, "producer-a", _publish(broker.names.exchange, "signal", _signal("alpha-2"))) is None

    def counted() -> bool:
        samples = aggregator.scrape()
        return total(samples, "tickbus_events_rejected_total", reason="source_not_allowed") == 2 and (
            total(samples, "tickbus_events_received_total") == 2
        )

    wait_for(counted, what="two applied, two refused")
    samples = aggregator.scrape()
    assert value(samples, "tickbus_events_received_total", kind="heartbeat", source="alpha-1") == 1
    assert value(samples, "tickbus_events_received_total", kind="heartbeat", source="bravo-1") == 1
    assert value(samples, "trading_source_up", source="bravo-2") is None
    listing = subprocess.run(
        [sys.executable, "-m", "aggregator", "dlq", "list", *broker.amqp_args("operator"), "--queue",
         broker.names.queue],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("source_not_allowed") == 2
    assert f"user '{broker.user('producer-a')}' may not publish as source 'bravo-2'" in listing.stdout
    assert "no user_id property" in listing.stdout


def test_a_full_dead_letter_queue_drops_the_newest_counts_them_and_never_stops_the_queue(
    secured_broker: SecuredBroker, start_aggregator: StartAggregator
) -> None:
    """With the dead-letter bound at 3 messages, 10 bad messages leave 3 dead letters; the 7 the broker refused
    are counted in tickbus_dead_letters_dropped_total and logged; good events after them apply and everything
    is acked."""
    broker, names = secured_broker, secured_broker.names
    broker.grant("--dead-letter-max-length", "3")
    args = broker.amqp_args("aggregator")
    aggregator = start_aggregator(names, extra_args=args[2:], amqp_url=args[1])

    async def flood(channel: AbstractChannel) -> object:
        exchange = await channel.get_exchange(names.exchange, ensure=False)
        for index in range(10):
            await exchange.publish(aio_pika.Message(b"{bad", message_id=f"bad-{index}"), routing_key="signal")
        return await exchange.publish(aio_pika.Message(_signal("after-1")), routing_key="signal")

    assert _attempt(broker, "producer-a", flood) is None
    wait_for(
        lambda: total(aggregator.scrape(), "tickbus_events_received_total", source="after-1") == 1,
        what="the good event after the flood",
    )
    # The broker refuses a dead letter by a negative confirm, which may come after the good event is applied.
    wait_for(
        lambda: value(aggregator.scrape(), "tickbus_dead_letters_dropped_total", reason="malformed") == 7,
        what="the 7 refused dead letters counted",
    )
    samples = aggregator.scrape()
    assert total(samples, "tickbus_events_rejected_total", reason="malformed") == 10
    assert value(samples, "tickbus_dead_letters_dropped_total", reason="malformed") == 7
    assert broker.queue_length(names.dead_letter_queue) == 3
    wait_for(lambda: broker.queue_length(names.queue) == 0, what="everything acked")
    assert "the dead-letter queue is full" in aggregator.log()
    policies = broker.rabbitmqctl("list_policies", "-p", broker.vhost, "--formatter", "json")
    (policy,) = json.loads(policies)
    assert json.loads(policy["definition"]) == {"max-length": 3, "max-length-bytes": 104857600,
                                                 "overflow": "reject-publish"}  # fmt: skip


def test_the_access_script_is_idempotent_and_never_prints_a_password(secured_broker: SecuredBroker) -> None:
    """Applying the same roles again succeeds and leaves the same users and permissions; no output of the script
    (definitions included) holds a password; guest is gone."""
    broker = secured_broker

    def state() -> tuple[list[object], list[object], list[object]]:
        users = json.loads(broker.rabbitmqctl("list_users", "--formatter", "json"))
        permissions = json.loads(broker.rabbitmqctl("list_permissions", "-p", broker.vhost, "--formatter", "json"))
        topics = json.loads(broker.rabbitmqctl("list_topic_permissions", "-p", broker.vhost, "--formatter", "json"))
        return sorted(users, key=str), sorted(permissions, key=str), sorted(topics, key=str)

    before = state()
    assert "guest" not in {user["user"] for user in before[0]}  # type: ignore[index]
    broker.grant("--delete-guest")
    assert state() == before
    secured = broker.secured
    printed = secured.access(
        "definitions", "--producer", f"{secured.user('producer-a')}={secured.password_file('producer-a')}",
        "--aggregator", f"{secured.user('aggregator')}={secured.password_file('aggregator')}",
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    document = json.loads(printed.stdout)
    assert {user["name"] for user in document["users"]} == {secured.user("producer-a"), secured.user("aggregator")}
    for role in ("producer-a", "aggregator"):
        assert broker.password(role) not in printed.stdout + printed.stderr
    bad = secured.access("definitions", "--producer", "nobody")
    assert bad.returncode == 2
    assert "--producer takes USER=PASSWORD_FILE" in bad.stderr


@pytest.mark.parametrize("role", ["producer-a", "operator"])
def test_a_role_without_configure_cannot_redeclare_the_aggregator_topology(
    secured_broker: SecuredBroker, role: str
) -> None:
    """Only the aggregator user declares the exchange and queues: the others are refused."""
    error = _attempt(secured_broker, role, _declare_topology(secured_broker))
    assert "ACCESS_REFUSED" in _refused(error)


def test_the_state_stream_needs_its_grant(
    secured_broker: SecuredBroker, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Replicas keeping their checkpoints in the stream `<queue>.state`: refused (and saying so) without the
    access script's --state-stream, consuming and committing with it."""
    broker = secured_broker
    config = tmp_path / "tickbus.toml"
    config.write_text("[amqp]\nsingle_active_consumer = true\n[state]\nstream = true\n")
    args = broker.amqp_args("aggregator")
    refused = start_aggregator(broker.names, config=config, extra_args=args[2:], amqp_url=args[1], wait_ready=False)
    assert refused.process is not None
    assert refused.process.wait(60) == 1, "refused at start, before it takes a message it could not commit"
    log = refused.log()
    assert "Traceback" not in log, log
    assert "ACCESS_REFUSED" in log, log
    assert f"{broker.names.queue}.state" in log
    assert "scripts/rabbitmq-access --state-stream" in log
    assert "consuming queue" not in log, log
    broker.grant("--state-stream")
    aggregator = start_aggregator(broker.names, config=config, extra_args=args[2:], amqp_url=args[1])
    sent = _emit(broker, "producer-a", "alpha-1")
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_received_total", source="alpha-1") == 1,
             what="the heartbeat, with checkpoints in the stream")  # fmt: skip
    wait_for(lambda: broker.queue_length(broker.names.queue) == 0, what="acked after a checkpoint in the stream")


def test_the_commands_say_when_a_user_lacks_the_permission(secured_broker: SecuredBroker) -> None:
    """`aggregator emit` as the aggregator user (which may not publish events) and `aggregator dlq list` as a
    producer (which may not read dead letters) exit 1 saying the user's permissions refuse it."""
    broker = secured_broker
    assert _attempt(broker, "aggregator", _declare_topology(broker)) is None
    emitted = _emit(broker, "aggregator", "alpha-1")
    assert emitted.returncode == 1
    assert f"RabbitMQ refused the publish to exchange {broker.names.exchange!r}" in emitted.stderr
    assert "the user's permissions do not allow it" in emitted.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "aggregator", "dlq", "list", *broker.amqp_args("producer-a"), "--queue",
         broker.names.queue],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 1
    assert "RabbitMQ refused access" in listed.stderr
    assert f"needs read access to {broker.names.dead_letter_queue!r}" in listed.stderr
