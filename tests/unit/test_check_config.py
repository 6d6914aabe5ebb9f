"""`aggregator check-config` as an operator runs it: exit 0 and a summary, or exit 2 and every problem."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "deploy" / "tickbus.toml", ROOT / "tests" / "scenarios" / "desk.toml",
           *sorted((ROOT / "docs" / "migration").glob("*.toml"))]  # fmt: skip


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aggregator", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_passes_with_a_one_line_summary(path: Path) -> None:
    """The configs the project ships check clean: exit 0, one line saying what they declare."""
    result = _check(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: OK: consumes exchange ")
    assert "custom metric(s)" in lines[0]


def test_the_summary_says_what_the_file_declares_and_hides_the_password(tmp_path: Path) -> None:
    """Exchange, queue, broker (password masked), address, namespace, custom metrics by type, state directory."""
    config = tmp_path / "tickbus.toml"
    config.write_text(
        '[amqp]\nurl = "amqp://desk:secret@broker:5672/"\nexchange = "desk"\nqueue = "desk.q"\nqueue_type = "quorum"\n'
        '[http]\nport = 10999\n[state]\ndir = "/var/lib/tickbus"\n'
        '[[metrics]]\nname = "fills_total"\ntype = "counter"\nhelp = "Fills."\n'
        '[[metrics]]\nname = "limit_ratio"\ntype = "gauge"\nhelp = "Limit."\n'
    )
    result = _check(config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{config}: OK: consumes exchange 'desk' into queue 'desk.q' (quorum, prefetch 2000) at "
        "amqp://desk:***@broker:5672/; serves 127.0.0.1:10999; namespace 'trading'; 2 custom metric(s) "
        "(1 counter, 1 gauge); checkpoints in /var/lib/tickbus"
    )


def test_a_broken_config_exits_2_naming_every_problem_with_its_key(tmp_path: Path) -> None:
    """Problems in several sections and several [[metrics]] tables are all reported, each with its key."""
    config = tmp_path / "broken.toml"
    config.write_text(
        'log_level = "loud"\ncolour = "red"\n'
        '[amqp]\nurl = "http://broker"\nprefetch = 0\nexchnage = "x"\n'
        "[http]\nport = 70000\n"
        "[catalog]\ngauge_ttl_seconds = -1\n"
        '[[metrics]]\nname = "orders_total"\ntype = "gauge"\nhelp = "x"\n'
        '[[metrics]]\nname = "kill"\ntype = "gauge"\nhelp = "k"\nlables = ["a"]\n'
        '[[metrics]]\nname = "kill"\ntype = "counter"\n'
        '[[metrics]]\nname = "signals_total"\ntype = "counter"\nhelp = "clash"\n'
    )
    result = _check(config)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"{config}: 12 problems"
    keys = [line.removeprefix(f"{config}: ").split(":")[0] for line in lines[1:]]
    assert keys == [
        "colour", "amqp.exchnage", "amqp.url", "amqp.prefetch", "http.port", "catalog.gauge_ttl_seconds",
        "log_level", "metrics[0] (orders_total)", "metrics[1] (kill).lables", "metrics[2] (kill).help",
        "metrics[3] (signals_total).name", "metrics",
    ]  # fmt: skip
    text = result.stderr
    assert "only counters end in `_total`" in text
    assert "has the name of the built-in metric trading_signals_total" in text
    assert "'kill' is declared 2 times" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "config file not found"),
        ("[amqp\n", "not valid TOML"),
        ("amqp = 3\n", "amqp: expected a table ([amqp]), got int"),
        ("metrics = 3\n", "metrics: expected an array of tables ([[metrics]]), got int"),
    ],
)
def test_unreadable_files_and_wrong_shapes_are_one_clear_problem(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    """A missing file, bad TOML, or a section of the wrong shape: exit 2 and a line saying which."""
    config = tmp_path / "tickbus.toml"
    if content is not None:
        config.write_text(content)
    result = _check(config)
    assert result.returncode == 2
    assert f"{config}: {expected}" in result.stderr


def test_a_shard_replica_on_a_cluster_passes_and_the_summary_names_its_nodes_shard_and_failover(
    tmp_path: Path,
) -> None:
    """A replica's config as docs/operations.md writes it (three nodes, a password file, quorum queues, single
    active consumer, the state stream, [shard]) passes: the password file is checked together with the URLs, not
    against the default URL's password; the summary names every node, the shard exchange and weight, the single
    active consumer and the stream."""
    secret = tmp_path / "aggregator"
    secret.write_text("s3cret\n")
    config = tmp_path / "shard-1.toml"
    config.write_text(
        '[amqp]\nurls = ["amqp://agg@n1:5672/", "amqp://agg@n2:5672/", "amqp://agg@n3:5672/"]\n'
        f'password_file = "{secret}"\nqueue = "tickbus.shard-1"\nqueue_type = "quorum"\n'
        'dead_letter_queue_type = "quorum"\nsingle_active_consumer = true\n'
        "[state]\nstream = true\n[shard]\nenabled = true\nweight = 2\n"
    )
    result = _check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == (
        f"{config}: OK: consumes exchange 'metrics' through shard exchange 'metrics.shards' (consistent hash on the "
        "source, weight 2) into queue 'tickbus.shard-1' (quorum, prefetch 2000, single active consumer) at "
        "amqp://agg@n1:5672/, amqp://agg@n2:5672/, amqp://agg@n3:5672/; serves 127.0.0.1:10464; namespace "
        "'trading'; 0 custom metric(s); checkpoints in stream 'tickbus.shard-1.state'"
    )


def test_shard_and_broker_address_mistakes_are_named_by_their_keys(tmp_path: Path) -> None:
    """A bad weight, an unknown [shard] key, URLs of mixed schemes and a shard exchange that is the metrics
    exchange itself are each reported with their key."""
    config = tmp_path / "bad.toml"
    config.write_text(
        '[amqp]\nurls = ["amqp://a@n1/", "amqps://a@n2/"]\n[shard]\nenabled = true\nweight = 0\nhash = "x"\n'
    )
    result = _check(config)
    assert result.returncode == 2
    assert "shard.hash: unknown key" in result.stderr
    assert "shard.weight: Expected `int` >= 1" in result.stderr
    assert "amqp.urls mixes amqp:// and amqps://" in result.stderr
    same = tmp_path / "same.toml"
    same.write_text('[amqp]\nexchange = "desk"\n[shard]\nenabled = true\nexchange = "desk"\n')
    result = _check(same)
    assert result.returncode == 2
    assert "shard.exchange must differ from amqp.exchange" in result.stderr
