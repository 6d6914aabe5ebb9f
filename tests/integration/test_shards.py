"""Sharded aggregators on a RabbitMQ node with the consistent-hash exchange plugin: every source on one replica,
sums exact, and a replica added mid-stream moving some sources without losing or doubling a count."""

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest

from aggregator.amqp.connection import connect
from aggregator.amqp.topology import declare_topology
from aggregator.config import AmqpSettings, ShardSettings
from tests.support.process import AggregatorProcess
from tests.support.rabbitnodes import CONSISTENT_HASH_PLUGIN, PrivateNode, RabbitNodes
from tests.support.scrape import wait_for
from tests.support.shards import (
    COUNTER,
    GAUGE,
    SourceStream,
    by_source,
    replica_names,
    scrape_all,
    shard_config,
    wait_counted,
)

StartAggregator = Callable[..., AggregatorProcess]
SOURCES = [f"desk-{index:02d}" for index in range(24)]
PLUGIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-shard-plugin"


@pytest.fixture(scope="module")
def hash_node() -> Iterator[PrivateNode]:
    """One private node with rabbitmq_consistent_hash_exchange for the module's tests."""
    nodes = RabbitNodes()
    try:
        yield nodes.node(plugins=[CONSISTENT_HASH_PLUGIN])
    finally:
        nodes.close()


def _exchange() -> str:
    return f"shards.{uuid.uuid4().hex[:8]}"


def test_three_shards_give_each_source_to_one_replica_and_count_every_event_once(
    hash_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Three replicas with [shard] on, 24 sources publishing through the unchanged Python emitter: each source's
    counter and gauge live on exactly one replica, every replica holds some sources, and the sum over the
    replicas is every event, once."""
    exchange = _exchange()
    config = shard_config(tmp_path, "replica")
    replicas = [
        start_aggregator(replica_names(exchange, f"{exchange}.shard-{index}"), config=config, amqp_url=hash_node.url)
        for index in range(3)
    ]
    events = 400
    SourceStream(hash_node.url, exchange, SOURCES, events).start().join()
    samples = wait_counted(lambda: replicas, len(SOURCES) * events)
    time.sleep(0.5)
    samples = scrape_all(replicas)

    counters = by_source(samples, COUNTER)
    assert set(counters) == set(SOURCES)
    assert {source: list(where.values()) for source, where in counters.items()} == {
        source: [float(events)] for source in SOURCES
    }
    gauges = by_source(samples, GAUGE)
    assert {source: (list(where), list(where.values())) for source, where in gauges.items()} == {
        source: (list(counters[source]), [float(events)]) for source in SOURCES
    }
    holders = {next(iter(where)) for where in counters.values()}
    assert holders == {0, 1, 2}, f"sources per replica: {counters}"
    for replica in replicas:
        assert "bound to shard exchange" in replica.log()


def test_an_unsharded_aggregator_restarted_as_a_shard_keeps_its_queue_and_drops_its_direct_binding(
    hash_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """The first step from one aggregator to shards: the running aggregator is restarted with [shard] on (and its
    dead-letter exchange kept, so its queue is redeclared as it was). It keeps its queue and state, its queue now
    takes its share through the shard exchange only, and with a second replica the sums are exact: no message
    reaches it both directly and through the ring."""
    exchange = _exchange()
    names = replica_names(exchange, f"{exchange}.aggregator")
    state = ["--state-dir", str(tmp_path / "state")]
    single = start_aggregator(names, amqp_url=hash_node.url, extra_args=state)
    SourceStream(hash_node.url, exchange, SOURCES[:6], 100).start().join()
    wait_counted(lambda: [single], 600)
    assert single.stop() == 0
    first = shard_config(tmp_path, "first", f'[amqp]\ndead_letter_exchange = "{exchange}.dead"')
    replicas = [
        start_aggregator(names, config=first, amqp_url=hash_node.url, extra_args=state),
        start_aggregator(replica_names(exchange, f"{exchange}.shard-2"), config=shard_config(tmp_path, "second"),
                         amqp_url=hash_node.url),
    ]  # fmt: skip
    SourceStream(hash_node.url, exchange, SOURCES, 200).start().join()
    wait_counted(lambda: replicas, 600 + len(SOURCES) * 200)
    time.sleep(1.0)
    counters = by_source(scrape_all(replicas), COUNTER)
    expected = {source: 200.0 + (100.0 if source in SOURCES[:6] else 0.0) for source in SOURCES}
    assert {source: sum(where.values()) for source, where in counters.items()} == expected
    assert any(1 in where for where in counters.values()), "the second replica took no source"


def test_a_replica_added_mid_stream_moves_some_sources_and_the_sums_stay_exact(
    hash_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Two replicas, 24 sources streaming; a third replica joins mid-stream. Some sources move to it (and only
    to it); each moved source's count is split between its old replica (what it counted before) and the new one
    (from there on), and the sums are exact. The old replica's gauges of a moved source expire after the gauge
    time to live, so after that every source's gauge is on one replica, with its last value."""
    exchange = _exchange()
    ttl = 3.0
    config = shard_config(tmp_path, "replica", f"[catalog]\ngauge_ttl_seconds = {ttl}\nheartbeat_staleness_seconds = 2")
    replicas = [
        start_aggregator(replica_names(exchange, f"{exchange}.shard-{index}"), config=config, amqp_url=hash_node.url)
        for index in range(2)
    ]
    events = 1_500
    stream = SourceStream(hash_node.url, exchange, SOURCES, events, seconds=8.0).start()
    wait_for(lambda: all(scrape_all(replicas)), what="both replicas to count")
    time.sleep(2.0)
    added = start_aggregator(replica_names(exchange, f"{exchange}.shard-2"), config=config, amqp_url=hash_node.url)
    replicas.append(added)
    stream.join()
    samples = wait_counted(lambda: replicas, len(SOURCES) * events)
    finished = time.monotonic()
    time.sleep(0.5)
    samples = scrape_all(replicas)

    counters = by_source(samples, COUNTER)
    assert {source: sum(where.values()) for source, where in counters.items()} == {
        source: float(events) for source in SOURCES
    }
    moved = {source: where for source, where in counters.items() if len(where) > 1}
    assert moved, f"no source moved to the added replica: {counters}"
    for source, where in moved.items():
        assert len(where) == 2, f"{source} counted on {where}"
        assert 2 in where, f"{source} moved elsewhere than to the new replica: {where}"
        assert all(count > 0 for count in where.values())
    assert all(len(where) == 1 for source, where in counters.items() if source not in moved)

    def gauges_on_one_replica() -> dict[str, dict[int, float]] | None:
        gauges = by_source(scrape_all(replicas), GAUGE)
        return gauges if all(len(where) == 1 for where in gauges.values()) else None

    gauges = wait_for(gauges_on_one_replica, timeout=ttl + 10, what="the moved sources' old gauges to expire")
    expired_after = time.monotonic() - finished
    assert {source: list(where.items()) for source, where in gauges.items()} == {
        source: [(2 if source in moved else next(iter(counters[source])), float(events))] for source in SOURCES
    }
    print(f"{len(moved)} of {len(SOURCES)} sources moved; old gauges gone {expired_after:.1f}s after the stream")


def test_a_replica_that_leaves_mid_stream_hands_its_sources_over_and_the_sums_stay_exact(
    hash_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Three replicas, 24 sources streaming; `aggregator shard leave` takes the third replica's queue out of the
    ring mid-stream and returns once the replica drained it. From then on that replica counts nothing more, it is
    stopped, its queue deleted, and its final counts plus the two others' are every event, once."""
    exchange = _exchange()
    config = shard_config(tmp_path, "replica")
    replicas = [
        start_aggregator(replica_names(exchange, f"{exchange}.shard-{index}"), config=config, amqp_url=hash_node.url)
        for index in range(3)
    ]
    events = 1_500
    stream = SourceStream(hash_node.url, exchange, SOURCES, events, seconds=8.0).start()
    wait_for(lambda: all(scrape_all(replicas)), what="the replicas to count")
    time.sleep(2.0)
    leaving = replicas[2]
    left = subprocess.run(
        [sys.executable, "-m", "aggregator", "shard", "leave", "--config", str(config), "--queue", leaving.names.queue,
         "--exchange", exchange, "--amqp-url", hash_node.url, "--timeout", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert left.returncode == 0, left.stderr
    assert f"queue {leaving.names.queue!r} is drained" in left.stdout
    final = leaving.scrape()
    time.sleep(1.5)
    assert by_source([leaving.scrape()], COUNTER) == by_source([final], COUNTER)
    assert leaving.stop() == 0
    hash_node.rabbitmqctl("delete_queue", leaving.names.queue)
    stream.join()
    samples = [*wait_counted(lambda: replicas[:2], len(SOURCES) * events - sum(by_counter(final))), final]
    counters = by_source(samples, COUNTER)
    assert {source: sum(where.values()) for source, where in counters.items()} == {
        source: float(events) for source in SOURCES
    }
    assert any(2 in where for where in counters.values()), "the leaving replica held no source"


def by_counter(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> list[float]:
    return [value for (name, _), value in samples.items() if name == COUNTER]


async def _declare_shard_exchange(url: str, exchange: str) -> str:
    connection = await aio_pika.connect(url, timeout=15)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    return exchange


def _plugin_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PLUGIN_SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False)


def test_without_the_plugin_the_replica_exits_naming_the_script_which_then_enables_it(
    rabbit_nodes: RabbitNodes, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """On a node without rabbitmq_consistent_hash_exchange, a replica with [shard] on exits 1 saying which plugin
    to enable and with which script, instead of retrying forever; `scripts/rabbitmq-shard-plugin --check` says it
    is missing; the script enables it on the running node (twice is fine) and the replica then starts."""
    node = rabbit_nodes.node()
    exchange = asyncio.run(_declare_shard_exchange(node.url, _exchange()))
    replica = start_aggregator(
        replica_names(exchange, f"{exchange}.shard-0"),
        config=shard_config(tmp_path, "replica"),
        amqp_url=node.url,
        wait_ready=False,
    )
    assert replica.process is not None
    assert replica.process.wait(60) == 1
    log = replica.log()
    assert "enable the rabbitmq_consistent_hash_exchange plugin" in log, log
    assert "scripts/rabbitmq-shard-plugin" in log

    check = _plugin_script("--check", node.node_name)
    assert check.returncode == 1
    assert f"not enabled on {node.node_name}" in check.stderr
    for _ in range(2):
        enabled = _plugin_script(node.node_name)
        assert enabled.returncode == 0, enabled.stderr
        assert f"{node.node_name} has the x-consistent-hash exchange type" in enabled.stdout
    assert _plugin_script("--check", node.node_name).returncode == 0
    assert CONSISTENT_HASH_PLUGIN in (node.base_dir / node.name / "enabled_plugins").read_text()
    replica.start()
    assert "bound to shard exchange" in replica.log()


ACCESS_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-access"
NODE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-node"


def _grant(node: PrivateNode, vhost: str, exchange: str, secrets: Path, *queue_options: str) -> None:
    for role in ("aggregator", "producer", "operator"):
        (secrets / role).write_text(f"{role}-{uuid.uuid4().hex}\n")
    result = subprocess.run(
        [sys.executable, str(ACCESS_SCRIPT), "apply", "--vhost", vhost, "--exchange", exchange,
         "--aggregator", f"{vhost}-aggregator={secrets / 'aggregator'}",
         "--producer", f"{vhost}-producer={secrets / 'producer'}",
         "--operator", f"{vhost}-operator={secrets / 'operator'}",
         *queue_options,
         "--rabbitmqctl", f"{NODE_SCRIPT} ctl {node.name} --base-dir {node.base_dir}"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_access_script_grants_a_sharded_deployment_exactly_what_it_needs(
    hash_node: PrivateNode, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """With `scripts/rabbitmq-access --shard-queue` for each replica, two replicas run as the aggregator user and
    count a producer user's events exactly between them, and the operator user lists each replica's dead letters.
    Granted for one queue only (no --shard-queue), the aggregator user is refused the shard exchange."""
    vhost, exchange = f"tickbus-{uuid.uuid4().hex[:8]}", _exchange()
    queues = [f"{exchange}.shard-{index}" for index in range(2)]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    port = hash_node.amqp_port

    def url(role: str) -> str:
        return f"amqp://{vhost}-{role}@127.0.0.1:{port}/{vhost}"

    _grant(hash_node, vhost, exchange, secrets, "--queue", queues[0])
    refused = asyncio.run(_declare_as(url("aggregator"), secrets / "aggregator", exchange, queues[0]))
    assert isinstance(refused, aiormq.exceptions.ChannelAccessRefused), repr(refused)
    assert f"{exchange}.shards" in str(refused)

    _grant(hash_node, vhost, exchange, secrets, *(word for queue in queues for word in ("--shard-queue", queue)))
    config = shard_config(tmp_path, "replica", f'[amqp]\npassword_file = "{secrets / "aggregator"}"')
    replicas = [start_aggregator(replica_names(exchange, queue), config=config, amqp_url=url("aggregator"))
                for queue in queues]  # fmt: skip
    sources = SOURCES[:8]
    stream = SourceStream(url("producer"), exchange, sources, 300, password_file=str(secrets / "producer"))
    stream.start().join()
    samples = wait_counted(lambda: replicas, len(sources) * 300)
    assert {source: sum(where.values()) for source, where in by_source(samples, COUNTER).items()} == dict.fromkeys(
        sources, 300.0
    )
    for queue in queues:
        listed = subprocess.run(
            [sys.executable, "-m", "aggregator", "dlq", "list", "--config", str(config), "--queue", queue,
             "--amqp-url", url("operator"), "--amqp-password-file", str(secrets / "operator")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr


async def _declare_as(url: str, password_file: Path, exchange: str, queue: str) -> BaseException | None:
    amqp = AmqpSettings(url=url, password_file=str(password_file), exchange=exchange, queue=queue,
                        dead_letter_exchange=f"{queue}.dead")  # fmt: skip
    connection = await connect(amqp, "tickbus-test")
    async with connection:
        channel = await connection.channel()
        try:
            await declare_topology(channel, amqp, ShardSettings(enabled=True))
        except aiormq.exceptions.AMQPError as error:
            return error
    return None
