"""The settings of a sharded replica on a cluster: several broker URLs, [shard], the names derived from them, and
the robust connection moving on to the next node; no broker involved."""

import asyncio
from pathlib import Path

import pytest

from aggregator.amqp.connection import FailoverConnection, where
from aggregator.amqp.topology import SHARD_EXCHANGE_ARGUMENTS, SHARD_EXCHANGE_TYPE
from aggregator.config import AmqpSettings, ConfigError, load_settings, split_urls
from schemas.wire import DEFAULT_AMQP_URL, HEADER_SOURCE

NODES = ["amqp://agg@n1:5672/", "amqp://agg@n2:5672/", "amqp://agg@n3:5672/"]


def test_several_urls_split_at_commas_that_start_a_url_only() -> None:
    """A flag or variable naming several brokers splits where a new amqp:// or amqps:// URL starts; a comma in a
    password stays in it."""
    assert split_urls("amqp://a@n1/, amqp://a@n2/,amqps://a:p,w@n3/") == [
        "amqp://a@n1/",
        "amqp://a@n2/",
        "amqps://a:p,w@n3/",
    ]
    assert split_urls(DEFAULT_AMQP_URL) == [DEFAULT_AMQP_URL]


def test_urls_are_the_addresses_tried_in_order_and_url_is_the_first() -> None:
    """With `urls`, the addresses are the list and `url` (what TLS and the user are read from) its first;
    without, `url` alone. Passwords never show where the addresses are logged."""
    amqp = AmqpSettings(urls=["amqp://agg:secret@n1/", "amqp://agg:secret@n2/"])
    assert amqp.addresses == ["amqp://agg:secret@n1/", "amqp://agg:secret@n2/"]
    assert amqp.url == "amqp://agg:secret@n1/"
    assert where(amqp) == "amqp://agg:***@n1/, amqp://agg:***@n2/"
    assert AmqpSettings().addresses == [DEFAULT_AMQP_URL]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "amqp://x@other/", "urls": NODES}, "both amqp.url and amqp.urls are set"),
        ({"urls": ["amqp://a@n1/", "amqps://a@n2/"]}, "mixes amqp:// and amqps://"),
        ({"urls": ["amqp://a@n1/", "amqp://b@n2/"]}, "differ in user, password or vhost"),
        ({"urls": ["amqp://a@n1/", "amqp://a@n2/other"]}, "differ in user, password or vhost"),
        ({"urls": ["amqp://a@n1/", "http://n2/"]}, "urls[1] must start with amqp:// or amqps://"),
        ({"urls": ["amqps://a@n1/", "amqps://a@n2/?cafile=x"]}, "urls[1]: set TLS with amqp.ca_file"),
    ],
)
def test_broker_urls_that_cannot_be_one_cluster_are_refused_naming_the_key(
    settings: dict[str, object], message: str
) -> None:
    """Every mistake in the list is a ConfigError naming `amqp.urls` (or the entry) and never quoting a URL."""
    with pytest.raises(ConfigError, match="amqp") as refused:
        load_settings(None, {f"amqp.{key}": value for key, value in settings.items()})
    assert message in str(refused.value)


def test_the_amqp_url_flag_with_commas_replaces_the_files_urls(tmp_path: Path) -> None:
    """`--amqp-url a,b` (what the CLI turns into overrides) replaces a config file's `urls`, and one URL given that
    way replaces them too."""
    config = tmp_path / "replica.toml"
    config.write_text(f"[amqp]\nurls = {NODES!r}\n".replace("'", '"'))
    assert load_settings(config).amqp.addresses == NODES
    flag = "amqp://agg@m1/,amqp://agg@m2/"
    overridden = load_settings(config, {"amqp.url": split_urls(flag)[0], "amqp.urls": split_urls(flag)})
    assert overridden.amqp.addresses == ["amqp://agg@m1/", "amqp://agg@m2/"]


def test_a_sharded_replica_gets_its_own_dead_letter_exchange_unless_it_names_one(tmp_path: Path) -> None:
    """Sharded replicas share the metrics exchange: each one's dead-letter exchange defaults to `<queue>.dead`, so
    dead letters land in its own dead-letter queue only; one set explicitly (a replica keeping the one it had) is
    kept. Unsharded, `<exchange>.dead` as before. The shard exchange defaults to `<exchange>.shards` and may not be
    the metrics exchange."""
    sharded = load_settings(None, {"amqp.queue": "q1", "shard.enabled": True})
    assert sharded.amqp.dead_letter_exchange_name == "q1.dead"
    assert sharded.amqp.dead_letter_queue_name == "q1.dead"
    assert sharded.shard.exchange_name(sharded.amqp) == "metrics.shards"
    kept = load_settings(None, {"amqp.queue": "q1", "amqp.dead_letter_exchange": "metrics.dead", "shard.enabled": True})
    assert kept.amqp.dead_letter_exchange_name == "metrics.dead"
    assert load_settings(None, {"amqp.queue": "q1"}).amqp.dead_letter_exchange_name == "metrics.dead"
    with pytest.raises(ConfigError, match=r"shard\.exchange must differ"):
        load_settings(None, {"shard.enabled": True, "shard.exchange": "metrics"})
    with pytest.raises(ConfigError, match=r"shard\.weight"):
        load_settings(None, {"shard.enabled": True, "shard.weight": 0})


def test_the_shard_exchange_hashes_on_the_source_header() -> None:
    """The exchange is RabbitMQ's consistent-hash type and hashes on the header producers set to the source (the
    plugin refuses `hash-property = app_id`)."""
    assert SHARD_EXCHANGE_TYPE == "x-consistent-hash"
    assert SHARD_EXCHANGE_ARGUMENTS == {"hash-header": HEADER_SOURCE}
    assert HEADER_SOURCE == "x-tickbus-source"


def test_the_robust_connection_moves_to_the_next_node_round_robin_with_the_password_from_its_file(
    tmp_path: Path,
) -> None:
    """Each `advance` aims the next attempt at the next node, wrapping around; every node's URL carries the
    password read from the password file, and what is logged of it does not."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    amqp = AmqpSettings(urls=NODES, password_file=str(secret))

    async def walk() -> list[tuple[str, str]]:
        connection = FailoverConnection(NODES[0], amqp=amqp)  # type: ignore[arg-type]
        seen = [(str(connection.url), connection.address)]
        for _ in range(3):
            connection.advance()
            seen.append((str(connection.url), connection.address))
        return seen

    assert asyncio.run(walk()) == [
        ("amqp://agg:s3cret@n1:5672/", "amqp://agg@n1:5672/"),
        ("amqp://agg:s3cret@n2:5672/", "amqp://agg@n2:5672/"),
        ("amqp://agg:s3cret@n3:5672/", "amqp://agg@n3:5672/"),
        ("amqp://agg:s3cret@n1:5672/", "amqp://agg@n1:5672/"),
    ]
