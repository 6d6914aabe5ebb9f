"""Shards on a three-node RabbitMQ cluster: quorum queues, the replicas listing every node, one node killed
mid-stream and, on the shard with a standby, the active replica killed too; every count exact."""

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.process import AggregatorProcess
from tests.support.rabbitnodes import CONSISTENT_HASH_PLUGIN, RabbitNodes
from tests.support.scrape import value, wait_for
from tests.support.shards import COUNTER, SourceStream, by_source, replica_names, shard_config, wait_counted

StartAggregator = Callable[..., AggregatorProcess]
SOURCES = [f"floor-{index:02d}" for index in range(16)]
EVENTS = 2_000
QUORUM = '[amqp]\nqueue_type = "quorum"\ndead_letter_queue_type = "quorum"\n'
FAILOVER = QUORUM + "single_active_consumer = true\n[state]\nstream = true\n"


def _received(replica: AggregatorProcess) -> float:
    try:
        return value(replica.scrape(), "tickbus_messages_received_total") or 0.0
    except OSError:
        return 0.0


@pytest.mark.volume
def test_shards_on_a_three_node_cluster_survive_a_node_and_an_active_replica_killed_with_exact_counts(
    rabbit_nodes: RabbitNodes, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Two shards over a three-node cluster with the consistent-hash plugin: shard 0 an active replica and a
    standby (single active consumer, checkpoints in a stream), shard 1 one replica with a state directory; all
    connect to the first node and list the three. The first node is killed mid-stream: every replica reconnects
    to a survivor. Then shard 0's active replica is killed: the standby takes over. The sums are exact."""
    cluster = rabbit_nodes.cluster(3, plugins=[CONSISTENT_HASH_PLUGIN])
    doomed, survivors = cluster.nodes[0], cluster.nodes[1:]
    urls = ",".join(cluster.urls)
    exchange = f"floor.{uuid.uuid4().hex[:8]}"
    failover = shard_config(tmp_path, "shard-0", FAILOVER)
    plain = shard_config(tmp_path, "shard-1", QUORUM)
    shard0 = [
        start_aggregator(replica_names(exchange, f"{exchange}.shard-0"), config=failover, amqp_url=urls)
        for _ in range(2)
    ]
    shard1 = start_aggregator(
        replica_names(exchange, f"{exchange}.shard-1"),
        config=plain,
        amqp_url=urls,
        extra_args=["--state-dir", str(tmp_path / "shard-1-state")],
    )
    for replica in [*shard0, shard1]:
        assert f"at amqp://guest:***@127.0.0.1:{doomed.amqp_port}/" in replica.log()

    stream = SourceStream(survivors[-1].url, exchange, SOURCES, EVENTS, seconds=14.0).start()
    wait_for(lambda: _received(shard1) > 0 and any(_received(replica) > 0 for replica in shard0),
             timeout=60, what="both shards to consume")  # fmt: skip
    time.sleep(2.0)
    doomed.kill()
    cluster.wait_for_cluster(survivors)
    survivor_ports = [f"127.0.0.1:{node.amqp_port}" for node in survivors]

    def reconnected(replica: AggregatorProcess) -> bool:
        return any(f"reconnected to RabbitMQ at amqp://guest:***@{port}/" in replica.log() for port in survivor_ports)

    wait_for(lambda: all(map(reconnected, [*shard0, shard1])), timeout=90, what="every replica on a survivor")
    time.sleep(2.0)
    active = max(shard0, key=_received)
    standby = next(replica for replica in shard0 if replica is not active)
    before = _received(standby)
    active.stop(signal.SIGKILL)
    wait_for(lambda: _received(standby) > before, timeout=90, what="the standby to take over")

    stream.join(240)
    holders = [standby, shard1]
    wait_counted(lambda: holders, len(SOURCES) * EVENTS, timeout=180)
    time.sleep(1.0)
    counters = by_source([replica.scrape() for replica in holders], COUNTER)
    assert {source: sum(where.values()) for source, where in counters.items()} == {
        source: float(EVENTS) for source in SOURCES
    }
    assert {next(iter(where)) for where in counters.values()} == {0, 1}, counters
    assert all(len(where) == 1 for where in counters.values())
    assert "took over: loaded" in standby.log()
