"""A replica deposed by a network cut must not write its stale state into the state stream after the new active one."""

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.broker import RawMessage, publish_raw
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import total, wait_for
from tests.support.tcpproxy import TcpProxy

StartAggregator = Callable[..., AggregatorProcess]
CONFIG = """
[amqp]
queue_type = "quorum"
single_active_consumer = true

[state]
stream = true
checkpoint_interval_seconds = {interval}
"""


def _errors(names: Names, start: int, count: int) -> None:
    """`count` messages of one error event each, with ids `split-<n>` from `start`."""
    messages = [
        RawMessage(
            json.dumps(
                {"kind": "error", "ts": time.time(), "source": "split", "component": "c", "error_type": "t"}
            ).encode(),
            "error",
            message_id=f"split-{index}",
        )
        for index in range(start, start + count)
    ]
    publish_raw(names.exchange, messages)


def _count(aggregator: AggregatorProcess) -> float:
    try:
        return total(aggregator.scrape(), "trading_errors_total", source="split")
    except OSError:
        return -1.0


def test_a_replica_cut_off_mid_commit_does_not_overwrite_the_new_active_replicas_state(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Replica A applies 300 messages and is cut off from the broker before it commits them; B takes over, applies
    them again and 200 more (500, committed). A's connection comes back: A, now the standby, must not append its
    stale state (300) to the stream. When B is then killed, A takes over from the stream with one more message and
    must count 501."""
    slow = tmp_path / "slow.toml"
    slow.write_text(CONFIG.format(interval=8.0))  # A commits every 8 s: the cut lands between two commits
    fast = tmp_path / "fast.toml"
    fast.write_text(CONFIG.format(interval=0.2))
    with TcpProxy() as proxy:
        replica_a = start_aggregator(names, config=slow, amqp_url=proxy.url)
        replica_b = start_aggregator(names, config=fast)
        time.sleep(2.0)  # the commit A makes right after starting is behind us
        _errors(names, 0, 300)
        wait_for(lambda: _count(replica_a) == 300, what="A to apply the first 300")
        proxy.down()
        wait_for(lambda: _count(replica_b) == 300, timeout=60, what="B to take over and apply the 300 again")
        _errors(names, 300, 200)
        wait_for(lambda: _count(replica_b) == 500, what="B to apply 200 more")
        time.sleep(1.0)  # B has committed its 500
        proxy.up()
        wait_for(lambda: "consuming again" in replica_a.log(), timeout=60, what="A to reconnect")
        time.sleep(10.0)  # A's commit interval passes at least once while A is the standby
        replica_b.stop(signal.SIGKILL)
        _errors(names, 500, 1)  # a replica takes over when the broker first delivers to it
        wait_for(lambda: "took over" in replica_a.log().split("consuming again")[-1], timeout=60,
                 what="A to take over")  # fmt: skip
        time.sleep(1.0)
        assert _count(replica_a) == 501, replica_a.log()[-3000:]
