"""Aggregator settings: defaults, an optional TOML file and overrides from flags or environment."""

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlsplit

import msgspec

from schemas.types import LABEL_MAX_LENGTH, METRIC_NAME_PATTERN
from schemas.wire import DEFAULT_AMQP_URL, DEFAULT_EXCHANGE

RESERVED_LABELS = frozenset({"source", "le", "quantile"})

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
MetricNameField = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN)]
LabelNameField = Annotated[str, msgspec.Meta(min_length=1, max_length=LABEL_MAX_LENGTH, pattern=METRIC_NAME_PATTERN)]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the bad key."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A table of the config: an unknown key in it is an error that names the key."""


# TLS settings the AMQP client would take from the URL's query; tickbus takes them from its own keys only, so
# that certificate verification cannot be turned off by a URL.
_URL_TLS_OPTIONS = frozenset({"cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl"})
# Several broker URLs in one flag or variable: split at a comma that starts another amqp:// or amqps:// URL (a
# comma inside a password stays where it is).
_URL_SEPARATOR = re.compile(r"\s*,\s*(?=amqps?://)")


def split_urls(text: str) -> list[str]:
    """`amqp://a,amqp://b` (a flag or environment variable naming several brokers) as a list of URLs."""
    return [part for part in _URL_SEPARATOR.split(text.strip()) if part]


def _scheme(url: str) -> str:
    """A URL's scheme for an error message (never the URL: it may hold a password)."""
    return url.partition("://")[0] + "://" if "://" in url else "no scheme"


def _checked_addresses(addresses: list[str], key: str) -> list[SplitResult]:
    """The broker URLs split, once each is known to be amqp:// or amqps:// without TLS options, and all alike."""
    for position, url in enumerate(addresses):
        where = f"{key}[{position}]" if key == "urls" else key
        # Never quote the URL in an error: it may hold a password.
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"{where} must start with amqp:// or amqps://, got {_scheme(url)[:16]!r}")
        given = sorted(_URL_TLS_OPTIONS.intersection(name for name, _ in parse_qsl(urlsplit(url).query)))
        if given:
            raise ValueError(
                f"{where}: set TLS with amqp.ca_file, amqp.cert_file and amqp.key_file, not in the URL ({given[0]}=)"
            )
    parts = [urlsplit(url) for url in addresses]
    if len({part.scheme for part in parts}) > 1:
        raise ValueError("amqp.urls mixes amqp:// and amqps://: the nodes of one cluster take one scheme")
    if len({(part.username, part.password, part.path) for part in parts}) > 1:
        raise ValueError("amqp.urls differ in user, password or vhost: the nodes of one cluster share them")
    return parts


class AmqpSettings(_Section):
    """Where to consume from, how to connect (TLS, credentials) and the topology the aggregator declares."""

    # amqp:// or amqps:// (TLS); the password may instead come from `password_file`.
    url: str = DEFAULT_AMQP_URL
    # The nodes of one RabbitMQ cluster, instead of `url`: connecting tries them in turn, from the first, and a lost
    # connection is taken up again by the next node that answers. Same scheme, user and vhost on every one.
    urls: list[str] = []
    # TLS (amqps:// only): the CA that signed the broker's certificate (empty: the system's CAs), and the client
    # certificate and key to present when the broker asks for one. The broker's certificate and its name are
    # always verified.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # A file holding the password of the URL's user (a Docker or Kubernetes secret); read at each connection.
    password_file: str = ""
    exchange: str = DEFAULT_EXCHANGE
    queue: str = "tickbus.aggregator"
    # Empty: derived from the exchange and queue names (`<exchange>.dead`, `<queue>.dead`).
    dead_letter_exchange: str = ""
    dead_letter_queue: str = ""
    binding_keys: list[str] = msgspec.field(default_factory=lambda: ["#"])
    prefetch: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 2000
    queue_type: Literal["classic", "quorum"] = "classic"
    # The dead-letter queue's type. On a cluster make it "quorum" too: a classic queue lives on one node, and while
    # that node is down no aggregator can declare it, so none can reconnect. (Default classic: an existing
    # dead-letter queue cannot change type in place.)
    dead_letter_queue_type: Literal["classic", "quorum"] = "classic"
    # Quorum queues only: deliveries after which the broker dead-letters a message. Well above what a
    # crash loop reaches before the poison breaker (state.poison_after) sets the culprit aside, so the
    # broker never dead-letters a backlog of good messages delivered during crashes.
    delivery_limit: Annotated[int, msgspec.Meta(ge=1)] = 100
    reconnect_max_seconds: PositiveSeconds = 30.0
    # Replicas consuming the same queue as one active consumer and standbys (with state.stream).
    single_active_consumer: bool = False

    def __post_init__(self) -> None:
        if self.urls:
            if self.url not in (DEFAULT_AMQP_URL, self.urls[0]):
                raise ValueError("both amqp.url and amqp.urls are set: list every broker in amqp.urls and drop url")
            self.url = self.urls[0]
        parts = _checked_addresses(self.addresses, "urls" if self.urls else "url")
        first = parts[0]
        tls_files = [key for key in ("ca_file", "cert_file", "key_file") if getattr(self, key)]
        if tls_files and first.scheme != "amqps":
            raise ValueError(
                f"amqp.{tls_files[0]} is set but the url is amqp://: use amqps:// and the broker's TLS port "
                "(5671 by default)"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError(
                "amqp.cert_file and amqp.key_file go together (the client certificate and its private key)"
            )
        if self.password_file:
            if first.password is not None:
                raise ValueError("the password is given twice: in amqp.url and in amqp.password_file; keep one")
            if not first.username:
                raise ValueError("amqp.password_file needs a user in amqp.url (amqps://USER@host:5671/)")
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"amqp.{key}: {path} does not exist or is not a file")

    @property
    def addresses(self) -> list[str]:
        """Every broker URL to connect to, in the order they are tried: `urls`, or `url` alone."""
        return list(self.urls) or [self.url]

    @property
    def tls(self) -> bool:
        return self.url.startswith("amqps://")

    @property
    def dead_letter_exchange_name(self) -> str:
        return self.dead_letter_exchange or f"{self.exchange}.dead"

    @property
    def dead_letter_queue_name(self) -> str:
        return self.dead_letter_queue or f"{self.queue}.dead"


class HttpSettings(_Section):
    """The scrape endpoint."""

    # Loopback by default: nothing outside this machine reads the metrics until an operator says so
    # (a container sets 0.0.0.0, and publishes the port on the host where it chooses). docs/security.md.
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 10464
    # The exporter-toolkit web config file (TLS, basic auth, headers); empty: plain HTTP, no auth.
    web_config_file: str = ""
    # Whether /healthz and /readyz ask for credentials too (orchestrators' probes usually cannot send them).
    probes_need_auth: bool = False
    # How often the web config file and the files it names are checked for changes; 0: only on SIGHUP.
    web_config_poll_seconds: Annotated[float, msgspec.Meta(ge=0)] = 2.0


class CatalogSettings(_Section):
    """Naming and retention of the metrics the aggregator serves."""

    # Not empty: the catalog's process_* metrics would clash with the aggregator's own.
    namespace: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")] = "trading"
    max_series_per_metric: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # Gauges not updated for this long are dropped (their source went away); 0 keeps them forever.
    gauge_ttl_seconds: Annotated[float, msgspec.Meta(ge=0)] = 900.0
    heartbeat_staleness_seconds: PositiveSeconds = 30.0
    # An event stamped further ahead of the aggregator's clock is refused (future_timestamp): a wrong
    # producer clock would otherwise pin gauges (last value by event time) until it is reached.
    max_clock_skew_seconds: PositiveSeconds = 300.0


class StateSettings(_Section):
    """Checkpointing: where the series state is kept so that restarts lose nothing."""

    # Empty: no checkpoints; messages are acked as soon as they are applied.
    dir: str = ""
    checkpoint_interval_seconds: PositiveSeconds = 0.2
    # Message ids remembered so that redeliveries and producer retries count once.
    dedup_window: Annotated[int, msgspec.Meta(ge=0)] = 50_000
    # A message the aggregator was processing when it died this many times is set aside as poison.
    poison_after: Annotated[int, msgspec.Meta(ge=1)] = 2
    # Checkpoints in a RabbitMQ stream (`<queue>.state`) instead of `dir`: a standby replica
    # (amqp.single_active_consumer) takes over from what the broker holds, with no shared disk.
    # `dir`, if set too, keeps only the black box then.
    stream: bool = False
    # Retention of that stream: several times the size of the state (tickbus warns when it is not).
    stream_max_bytes: Annotated[int, msgspec.Meta(ge=16 * 1024 * 1024)] = 512 * 1024 * 1024


class ShardSettings(_Section):
    """Sharding: this replica consumes one share of the sources, through RabbitMQ's consistent-hash exchange."""

    # On: the aggregator declares the consistent-hash exchange (hashing on the x-tickbus-source header), binds it to
    # the metrics exchange with amqp.binding_keys, and binds its own queue to it (not to the metrics exchange).
    # Needs the rabbitmq_consistent_hash_exchange plugin on every broker node (scripts/rabbitmq-shard-plugin).
    enabled: bool = False
    # The consistent-hash exchange every replica of the deployment shares; empty: `<amqp.exchange>.shards`.
    exchange: str = ""
    # This queue's share of the sources, relative to the other queues' weights (its binding key on the exchange).
    weight: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1

    def exchange_name(self, amqp: AmqpSettings) -> str:
        return self.exchange or f"{amqp.exchange}.shards"


SourcePattern = Annotated[str, msgspec.Meta(pattern=r"^(\*|[A-Za-z0-9_.:-]{1,64}|[A-Za-z0-9_.:-]{1,63}\*)$")]


class SourceAuthSettings(_Section):
    """Authenticated sources: which RabbitMQ users may publish events under which `source` names."""

    # On: an event is applied only if its message's user_id (which RabbitMQ checks against the connection's
    # user) may speak for the event's source; anything else is refused as source_not_allowed.
    enabled: bool = False
    # user -> the sources it may speak for: exact names, prefixes ending in `*`, or `*` for any source.
    users: dict[str, list[SourcePattern]] = {}

    def __post_init__(self) -> None:
        if self.enabled and not self.users:
            raise ValueError("enabled with no users: every event would be refused; list users and their sources")
        for user, patterns in self.users.items():
            if not patterns:
                raise ValueError(f"users.{user}: an empty list; give the sources it may publish as, or remove it")

    def allowed(self) -> dict[str, tuple[frozenset[str], tuple[str, ...]]]:
        """Each user's (exact source names, source prefixes); the prefix "" (from `*`) allows any source."""
        return {
            user: (
                frozenset(pattern for pattern in patterns if not pattern.endswith("*")),
                tuple(pattern[:-1] for pattern in patterns if pattern.endswith("*")),
            )
            for user, patterns in self.users.items()
        }


class CustomMetric(_Section):
    """A metric a user declares so that `metric` events can feed it."""

    name: MetricNameField
    type: Literal["counter", "gauge", "histogram"]
    help: Annotated[str, msgspec.Meta(min_length=1)]
    labels: list[LabelNameField] = []
    buckets: list[float] = []
    unit: str = ""
    # Gauges only: seconds a series lives without updates; unset for `gauge_ttl_seconds`, 0 for forever
    # (a state that is set once and stays, like a kill switch).
    ttl_seconds: Annotated[float, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must have a name ending in `_total`")
        if self.type != "counter" and self.name.endswith("_total"):
            raise ValueError(f"{self.type} {self.name!r}: only counters end in `_total`")
        if self.type == "histogram":
            if not self.buckets:
                raise ValueError(f"histogram {self.name!r} needs `buckets`")
            if sorted(set(self.buckets)) != self.buckets:
                raise ValueError(f"histogram {self.name!r}: buckets must be strictly increasing")
            if self.buckets[0] < 0:
                raise ValueError(
                    f"histogram {self.name!r}: buckets must be >= 0 (OpenMetrics allows no sum with negative "
                    "buckets); observe the size and put the sign in a label"
                )
        elif self.buckets:
            raise ValueError(f"{self.type} {self.name!r}: only histograms have `buckets`")
        if self.ttl_seconds is not None and self.type != "gauge":
            raise ValueError(f"{self.type} {self.name!r}: only gauges expire, so only they take `ttl_seconds`")
        reserved = RESERVED_LABELS.intersection(self.labels)
        if reserved:
            raise ValueError(f"metric {self.name!r}: label {sorted(reserved)[0]!r} is reserved")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"metric {self.name!r}: labels repeat")


class Settings(_Section):
    """Everything the aggregator is configured by."""

    amqp: AmqpSettings = msgspec.field(default_factory=AmqpSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    catalog: CatalogSettings = msgspec.field(default_factory=CatalogSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    source_auth: SourceAuthSettings = msgspec.field(default_factory=SourceAuthSettings)
    shard: ShardSettings = msgspec.field(default_factory=ShardSettings)
    metrics: list[CustomMetric] = []
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        names = [metric.name for metric in self.metrics]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"custom metric {duplicates[0]!r} is declared twice")
        if self.shard.enabled and not self.amqp.dead_letter_exchange:
            # Replicas share the metrics exchange: `<exchange>.dead` would copy every replica's dead letters into
            # every replica's dead-letter queue. Each replica's own exchange keeps them apart.
            self.amqp.dead_letter_exchange = f"{self.amqp.queue}.dead"
        if self.shard.enabled and self.shard.exchange_name(self.amqp) in (
            self.amqp.exchange,
            self.amqp.dead_letter_exchange_name,
        ):
            raise ValueError("shard.exchange must differ from amqp.exchange and its dead-letter exchange")


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults, then the TOML file at `path`, then dotted-key `overrides`.

    Overrides whose value is None are ignored, so unset CLI flags leave the file's value alone.
    """
    data: dict[str, Any] = {}
    origin = "flags and environment"
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the config file: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for dotted_key, value in (overrides or {}).items():
        if value is None:
            continue
        section = data
        *parents, leaf = dotted_key.split(".")
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = value
    try:
        return msgspec.convert(data, Settings)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{origin}: {_readable(str(error))}") from None


def _readable(message: str) -> str:
    """Msgspec says `at `$.amqp.prefetch``; users think of TOML keys like `amqp.prefetch`."""
    return message.replace("`$.", "`").replace(" - at `$`", "")
