"""Private RabbitMQ nodes do what the tests that use them rely on: TLS, a quorum cluster surviving kill -9, plugins."""

import asyncio
import json
import socket
import ssl
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
import trustme

from tests.support.rabbitnodes import (
    CONSISTENT_HASH_PLUGIN,
    Cluster,
    PrivateNode,
    RabbitNodeError,
    RabbitNodes,
    TlsFiles,
)

UNNAMED_HOST = "unnamed.tickbus.test"


class _ResolvingLoop(asyncio.SelectorEventLoop):
    """An event loop whose resolver also knows `names`, as a DNS record pointing them at an address would."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__()
        self._names = names

    async def getaddrinfo(  # type: ignore[override]
        self, host: str | None, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        host = self._names.get(host, host) if host is not None else None
        return await super().getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)


async def _round_trip(url: str, context: ssl.SSLContext | None, count: int) -> list[bytes]:
    """Publish `count` messages with confirms to a fresh queue, then consume them; the bodies received, in order."""
    connection = await aio_pika.connect(url, ssl_context=context, timeout=15)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        for index in range(count):
            await channel.default_exchange.publish(aio_pika.Message(f"tls-{index}".encode()), routing_key=queue.name)
        received = []
        async with asyncio.timeout(30), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                received.append(message.body)
                if len(received) == count:
                    break
        return received


def _refusal(
    url: str, context: ssl.SSLContext, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
) -> BaseException:
    """The error that connecting raises; fails the test if the connection is accepted."""

    async def connect() -> None:
        connection = await aio_pika.connect(url, ssl_context=context, timeout=15)
        await connection.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(connect())
        except Exception as error:
            return error
    raise AssertionError(f"{url} accepted a client it should have refused")


def _verification_error(error: BaseException) -> ssl.SSLCertVerificationError:
    cause = error.__cause__ or error.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(error)
    return cause


def test_tls_node_serves_a_trusted_client_and_refuses_the_others(tls_node: PrivateNode, tls_files: TlsFiles) -> None:
    """Over amqps:// a client trusting the CA and presenting its certificate publishes and consumes; a client
    trusting another CA, one reaching the node by a name its certificate lacks, and one with no client
    certificate are refused."""
    assert tls_node.tls_url.startswith("amqps://guest:guest@localhost:")
    assert asyncio.run(_round_trip(tls_node.tls_url, tls_files.client_context(), 50)) == [
        f"tls-{index}".encode() for index in range(50)
    ]

    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    stranger.load_cert_chain(tls_files.client_certificate, tls_files.client_key)
    unknown_ca = _verification_error(_refusal(tls_node.tls_url, stranger))
    assert unknown_ca.verify_code in {19, 20}, unknown_ca.verify_message  # self-signed in chain / no local issuer

    # The name resolves to the node, as a stale DNS record would; only the certificate check refuses it.
    unnamed_url = tls_node.tls_url.replace("@localhost:", f"@{UNNAMED_HOST}:")
    wrong_name = _verification_error(
        _refusal(unnamed_url, tls_files.client_context(), lambda: _ResolvingLoop({UNNAMED_HOST: "127.0.0.1"}))
    )
    assert "Hostname mismatch" in str(wrong_name.verify_message)

    no_certificate = _refusal(tls_node.tls_url, tls_files.client_context(with_certificate=False))
    assert isinstance(no_certificate, aio_pika.exceptions.AMQPConnectionError), repr(no_certificate)
    assert not isinstance(no_certificate.__cause__, ssl.SSLCertVerificationError), repr(no_certificate)


def _queue_info(node: PrivateNode, queue: str) -> dict[str, Any]:
    rows = json.loads(node.rabbitmqctl("list_queues", "name", "type", "leader", "members", "--formatter", "json"))
    (row,) = [row for row in rows if row["name"] == queue]
    return dict(row)


async def _publish(url: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(url, timeout=15)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
            )


async def _consume(url: str, queue: str, count: int) -> list[bytes]:
    connection = await aio_pika.connect(url, timeout=15)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        declared = await channel.declare_queue(queue, passive=True)
        received = []
        async with asyncio.timeout(60), declared.iterator() as messages:
            async for message in messages:
                await message.ack()
                received.append(message.body)
                if len(received) == count:
                    break
        return received


def test_quorum_queue_serves_every_message_after_its_leader_is_killed(rabbit_cluster: Cluster) -> None:
    """On a three-node cluster a quorum queue holding 500 confirmed messages loses its leader to kill -9;
    the two survivors elect another and deliver all 500, in order; the killed node, restarted on its data,
    is a running member again."""
    queue = f"tickbus.nodes.{uuid.uuid4().hex[:10]}"
    bodies = [f"event-{index}".encode() for index in range(500)]
    first = rabbit_cluster.nodes[0]
    asyncio.run(_publish(first.url, queue, bodies))
    info = _queue_info(first, queue)
    assert info["type"] == "quorum"
    assert set(info["members"]) == {node.node_name for node in rabbit_cluster.nodes}

    (leader,) = [node for node in rabbit_cluster.nodes if node.node_name == info["leader"]]
    leader.kill()
    assert not leader.running()
    survivors = rabbit_cluster.survivors(leader)
    rabbit_cluster.wait_for_cluster(survivors)

    assert asyncio.run(_consume(survivors[-1].url, queue, len(bodies))) == bodies
    assert _queue_info(survivors[0], queue)["leader"] in {node.node_name for node in survivors}

    leader.restart()
    rabbit_cluster.wait_for_cluster()
    assert leader.running_nodes() == {node.node_name for node in rabbit_cluster.nodes}


async def _hash_routing(url: str, keys: list[str]) -> list[int]:
    """Bind two queues to an x-consistent-hash exchange with equal weights, publish one message per key;
    how many messages each queue got."""
    connection = await aio_pika.connect(url, timeout=15)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("tickbus.shards", "x-consistent-hash", durable=True)
        queues = [await channel.declare_queue(f"tickbus.shard.{index}", durable=True) for index in range(2)]
        for queue in queues:
            await queue.bind(exchange, routing_key="1")
        for key in keys:
            await exchange.publish(aio_pika.Message(key.encode()), routing_key=key)
        counts = []
        for queue in queues:
            declared = await channel.declare_queue(queue.name, passive=True)
            counts.append(declared.declaration_result.message_count or 0)
        return counts


def test_consistent_hash_exchange_comes_with_the_plugin_enabled_on_a_private_node(rabbit_nodes: RabbitNodes) -> None:
    """A node started with rabbitmq_consistent_hash_exchange in its own enabled-plugins file has the
    x-consistent-hash type, and it spreads 200 routing keys over both bound queues, losing none."""
    node = rabbit_nodes.node(plugins=[CONSISTENT_HASH_PLUGIN])
    assert (node.base_dir / node.name / "enabled_plugins").read_text().strip() == f"[{CONSISTENT_HASH_PLUGIN}]."
    counts = asyncio.run(_hash_routing(node.url, [f"order-{index}" for index in range(200)]))
    assert sum(counts) == 200
    assert min(counts) > 0, counts


def test_a_node_that_cannot_start_says_why_and_leaves_nothing_running(rabbit_nodes: RabbitNodes) -> None:
    """A node whose data directory is damaged fails to start with RabbitNodeError carrying the node's own
    log lines (the boot failure and its reason), and no process of it is left behind."""
    node = rabbit_nodes.unstarted()
    mnesia = node.base_dir / node.name / "mnesia"
    mnesia.mkdir(parents=True)
    (mnesia / node.node_name).write_text("not a directory")
    with pytest.raises(RabbitNodeError) as failure:
        node.start()
    message = str(failure.value)
    assert f"{node.node_name} did not start" in message
    assert "BOOT FAILED" in message
    assert "cannot_create_mnesia_dir" in message
    assert not node.running()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", node.amqp_port)) != 0
