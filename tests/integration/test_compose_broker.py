"""The compose stack's RabbitMQ, run for real without Docker: a private node with deploy/rabbitmq/rabbitmq.conf and
the secrets scripts/amqp-secrets makes (its own ports and paths). It has no guest, speaks TLS with the
deployment's CA, holds the least-privilege users, bounds the dead letters and message sizes, and the aggregator
connects with exactly the settings compose gives it."""

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel

from schemas.wire import MAX_MESSAGE_BYTES
from tests.support.composebroker import ComposeBroker, make_secrets, start_compose_broker
from tests.support.deploy import compose_document, interpolate
from tests.support.process import AggregatorProcess, Names
from tests.support.rabbitnodes import RabbitNodes
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]
# The topology the compose aggregator declares: the defaults (compose sets neither).
NAMES = Names(exchange="metrics", queue="tickbus.aggregator")


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeBroker]:
    """A private node running the compose RabbitMQ configuration, on fresh secrets."""
    work = tmp_path_factory.mktemp("compose-broker")
    made = make_secrets(work / "secrets")
    assert made.returncode == 0, made.stderr
    nodes = RabbitNodes()
    try:
        yield start_compose_broker(nodes, work / "secrets", work / "node")
    finally:
        nodes.close()


def _password(broker: ComposeBroker, file: str) -> str:
    return (broker.secrets / file).read_text().strip()


def _context(broker: ComposeBroker) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(broker.secrets / "amqp-ca.crt"))


async def _session(broker: ComposeBroker, user: str, password: str, action: Callable[[AbstractChannel], object]
                   ) -> BaseException | None:  # fmt: skip
    try:
        connection = await aio_pika.connect(
            broker.url(user).replace("@", f":{password}@"), ssl_context=_context(broker), timeout=15
        )
    except (aiormq.exceptions.AMQPError, OSError) as error:
        return error
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await action(channel)  # type: ignore[misc]
        except aiormq.exceptions.AMQPError as error:
            return error
    return None


def _as(broker: ComposeBroker, user: str, file: str, action: Callable[[AbstractChannel], object]
        ) -> BaseException | None:  # fmt: skip
    return asyncio.run(_session(broker, user, _password(broker, file), action))


async def _nothing(channel: AbstractChannel) -> None:
    pass


def _aggregator_settings(broker: ComposeBroker) -> list[str]:
    """`aggregator` connection options from compose's aggregator environment, the container's names mapped here."""
    service = interpolate(compose_document(), {})["services"]["aggregator"]
    environment = service["environment"]
    secrets = {name: broker.secrets / Path(secret["file"]).name
               for name, secret in interpolate(compose_document(), {})["secrets"].items()}  # fmt: skip
    url = environment["TICKBUS_AMQP_URL"].replace("@rabbitmq:5671", f"@localhost:{broker.node.tls_port}")
    return [
        "--amqp-url", url,
        "--amqp-ca-file", str(secrets[environment["TICKBUS_AMQP_CA_FILE"].removeprefix("/run/secrets/")]),
        "--amqp-password-file", str(secrets[environment["TICKBUS_AMQP_PASSWORD_FILE"].removeprefix("/run/secrets/")]),
    ]  # fmt: skip


def test_no_guest_and_the_deployment_users_only(compose_broker: ComposeBroker) -> None:
    """Booted on the definitions, the node has the four tickbus users and no guest; guest cannot log in; every
    user logs in over TLS with its password from its secret file."""
    users = {row["user"]: row["tags"] for row in json.loads(compose_broker.node.rabbitmqctl("list_users", "--formatter",
                                                                                             "json"))}  # fmt: skip
    assert set(users) == {"tickbus-aggregator", "tickbus-producer", "tickbus-operator", "tickbus-admin"}
    assert users["tickbus-admin"] == ["administrator"]
    refused = asyncio.run(_session(compose_broker, "guest", "guest", _nothing))
    assert isinstance(refused, aiormq.exceptions.ProbableAuthenticationError), repr(refused)
    for user, file in (("tickbus-aggregator", "amqp-aggregator-password"), ("tickbus-producer",
                       "amqp-producer-password"), ("tickbus-operator", "amqp-operator-password")):  # fmt: skip
        assert _as(compose_broker, user, file, _nothing) is None, user


def test_the_listeners_are_tls_only_with_the_deployment_ca(compose_broker: ComposeBroker) -> None:
    """AMQP over TLS and the management UI over HTTPS (the plain AMQP port here is the test node's own, which
    compose's `listeners.tcp = none` removes); a client trusting another CA is refused."""
    status = json.loads(compose_broker.node.rabbitmqctl("status", "--formatter", "json"))
    protocols = {(listener["protocol"], int(listener["port"])) for listener in status["listeners"]}
    assert ("amqp/ssl", compose_broker.node.tls_port) in protocols
    assert ("https", compose_broker.management_port) in protocols
    assert not any(protocol == "http" for protocol, _ in protocols), protocols
    stranger = ssl.create_default_context()
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        asyncio.run(aio_pika.connect(compose_broker.url("tickbus-producer"), ssl_context=stranger, timeout=10))


def test_the_aggregator_runs_with_compose_settings_and_a_producer_publishes_only(
    compose_broker: ComposeBroker, start_aggregator: StartAggregator
) -> None:
    """`aggregator run` with compose's URL, CA file and password file consumes; tickbus-producer's events apply;
    the producer is refused when it consumes, publishes to the dead letters or deletes the queue; a message over
    the broker's max_message_size closes its channel; the dead-letter queue carries the shipped bound."""
    args = _aggregator_settings(compose_broker)
    aggregator = start_aggregator(NAMES, extra_args=args[2:], amqp_url=args[1])
    producer = [
        "--amqp-url", compose_broker.url("tickbus-producer"),
        "--amqp-ca-file", str(compose_broker.secrets / "amqp-ca.crt"),
        "--amqp-password-file", str(compose_broker.secrets / "amqp-producer-password"),
    ]  # fmt: skip
    sent = subprocess.run(
        [sys.executable, "-m", "aggregator", "emit", "heartbeat", "--source", "compose-1", *producer],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_received_total", source="compose-1") == 1,
             what="the producer's heartbeat")  # fmt: skip

    async def consume(channel: AbstractChannel) -> object:
        return await (await channel.get_queue(NAMES.queue, ensure=False)).get(fail=False)

    async def dead_letter(channel: AbstractChannel) -> object:
        exchange = await channel.get_exchange(f"{NAMES.exchange}.dead", ensure=False)
        return await exchange.publish(aio_pika.Message(b"{}"), routing_key="malformed")

    async def delete(channel: AbstractChannel) -> object:
        return await channel.queue_delete(NAMES.queue)

    for action in (consume, dead_letter, delete):
        refused = _as(compose_broker, "tickbus-producer", "amqp-producer-password", action)
        assert isinstance(refused, aiormq.exceptions.ChannelAccessRefused), (action.__name__, repr(refused))

    async def too_big(channel: AbstractChannel) -> object:
        exchange = await channel.get_exchange(NAMES.exchange, ensure=False)
        return await exchange.publish(aio_pika.Message(b"x" * (MAX_MESSAGE_BYTES + 1)), routing_key="signal")

    refused = _as(compose_broker, "tickbus-producer", "amqp-producer-password", too_big)
    assert isinstance(refused, aiormq.exceptions.ChannelPreconditionFailed), repr(refused)
    assert f"larger than configured max size {MAX_MESSAGE_BYTES}" in str(refused.args[0])

    queues = json.loads(compose_broker.node.rabbitmqctl("list_queues", "name", "policy", "--formatter", "json"))
    assert {row["name"]: row["policy"] for row in queues}[f"{NAMES.queue}.dead"] == (
        "tickbus-dead-letters-tickbus.aggregator.dead"
    )
    (policy,) = json.loads(compose_broker.node.rabbitmqctl("list_policies", "--formatter", "json"))
    assert json.loads(policy["definition"]) == {"max-length-bytes": 104857600, "overflow": "reject-publish"}
    password = _password(compose_broker, "amqp-aggregator-password")
    assert password not in aggregator.log()
    aggregator.stop()
    time.sleep(0.1)
