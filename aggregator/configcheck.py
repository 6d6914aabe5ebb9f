"""`aggregator check-config`: every problem of a config file with its key, or one line of what it declares."""

import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from aggregator.amqp.connection import where
from aggregator.config import (
    AmqpSettings,
    CatalogSettings,
    ConfigError,
    CustomMetric,
    HttpSettings,
    Settings,
    ShardSettings,
    StateSettings,
    load_settings,
)
from aggregator.ingest import Ingest
from aggregator.selfmetrics import SelfMetrics
from aggregator.statestream import stream_name
from aggregator.store import Store

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "amqp": AmqpSettings,
    "http": HttpSettings,
    "catalog": CatalogSettings,
    "state": StateSettings,
    "shard": ShardSettings,
}
REQUIRED_METRIC_KEYS = ("name", "type", "help")
# Keys checked together, since each one's validity depends on the others (a password file needs a user in the
# URL and no password there; TLS files need amqps://).
TOGETHER = {"amqp": ("url", "urls", "password_file", "ca_file", "cert_file", "key_file")}


@dataclass
class ConfigCheck:
    """The outcome: the problems found (each `key: what is wrong`), or none and a summary of the settings."""

    path: Path
    problems: list[str] = field(default_factory=list)
    settings: Settings | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line of what the file declares (with the defaults for what it leaves out)."""
        assert self.settings is not None
        settings = self.settings
        amqp, catalog = settings.amqp, settings.catalog
        types = Counter(metric.type for metric in settings.metrics)
        metrics = ", ".join(f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in sorted(types.items()))
        consumer = ", single active consumer" if amqp.single_active_consumer else ""
        shard = ""
        if settings.shard.enabled:
            shard = (
                f" through shard exchange {settings.shard.exchange_name(amqp)!r} (consistent hash on the source, "
                f"weight {settings.shard.weight})"
            )
        checkpoints = f"checkpoints in {settings.state.dir}" if settings.state.dir else "no checkpoints (no state dir)"
        if settings.state.stream:
            checkpoints = f"checkpoints in stream {stream_name(amqp.queue)!r}"
        return (
            f"{self.path}: OK: consumes exchange {amqp.exchange!r}{shard} into queue {amqp.queue!r} "
            f"({amqp.queue_type}, prefetch {amqp.prefetch}{consumer}) at {where(amqp)}; serves "
            f"{settings.http.host}:{settings.http.port}; namespace {catalog.namespace!r}; {len(settings.metrics)} "
            f"custom metric(s){f' ({metrics})' if metrics else ''}; {checkpoints}"
        )


def _located(prefix: str, error: msgspec.ValidationError, key: str = "") -> str:
    """`Expected int - at `$.prefetch`` under `amqp` becomes `amqp.prefetch: Expected int`.

    With `key` (a check of that key alone), an error of the whole table is that key's.
    """
    text, _, path = str(error).partition(" - at `$")
    path = path.rstrip("`")
    if key and not path.startswith(f".{key}"):
        path = f".{key}"
    return f"{prefix}{path}: {text}"


def _unknown(prefix: str, keys: list[str], known: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{key}: unknown key (known: {', '.join(known)})" for key in keys]


def _fields(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(item.name for item in msgspec.structs.fields(struct))


def _check_section(name: str, table: Any, struct: type[msgspec.Struct]) -> list[str]:
    """Each key of a section on its own (all of them have defaults), so every bad key is named; then the whole."""
    if not isinstance(table, dict):
        return [f"{name}: expected a table ([{name}]), got {type(table).__name__}"]
    known = _fields(struct)
    problems = _unknown(name, [key for key in table if key not in known], known)
    together = TOGETHER.get(name, ())
    for key, value in table.items():
        if key in known:
            alone = {key: value}
            if key in together:
                alone = {other: table[other] for other in together if other in table}
            try:
                msgspec.convert(alone, struct)
            except msgspec.ValidationError as error:
                problem = _located(name, error, key)
                if not any(problem.partition(": ")[2] == seen.partition(": ")[2] for seen in problems):
                    problems.append(problem)
    if not problems:
        try:
            msgspec.convert(table, struct)
        except msgspec.ValidationError as error:
            problems.append(_located(name, error))
    return problems


def _check_metrics(tables: Any, catalog: CatalogSettings) -> list[str]:
    """Each [[metrics]] table on its own, then the names declared twice.

    A table's unknown and missing keys, else its first invalid value, else whether a built-in metric has its name.
    """
    if not isinstance(tables, list):
        return [f"metrics: expected an array of tables ([[metrics]]), got {type(tables).__name__}"]
    known = _fields(CustomMetric)
    problems = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            problems.append(f"metrics[{index}]: expected a table, got {type(table).__name__}")
            continue
        name = table.get("name")
        prefix = f"metrics[{index}]" + (f" ({name})" if isinstance(name, str) else "")
        found = _unknown(prefix, [key for key in table if key not in known], known)
        found += [f"{prefix}.{key}: missing (required)" for key in REQUIRED_METRIC_KEYS if key not in table]
        if not found:
            try:
                metric = msgspec.convert(table, CustomMetric)
            except msgspec.ValidationError as error:
                found.append(_located(prefix, error))
            else:
                found += _check_against_the_catalog(prefix, metric, catalog)
        problems += found
    names = [table.get("name") for table in tables if isinstance(table, dict)]
    for repeated in sorted({name for name in names if isinstance(name, str) and names.count(name) > 1}):
        problems.append(f"metrics: {repeated!r} is declared {names.count(repeated)} times")
    return problems


def _check_against_the_catalog(prefix: str, metric: CustomMetric, catalog: CatalogSettings) -> list[str]:
    """A custom metric may not take the name of a built-in or a self-metric: what the service would refuse."""
    store = Store()
    try:
        Ingest(catalog, [metric], store, SelfMetrics(store))
    except ValueError as error:
        return [f"{prefix}.name: {error}"]
    return []


def check_config(path: Path) -> ConfigCheck:
    """Read and check the file alone (no flags or environment), collecting every problem it can name.

    Each section is checked key by key, each [[metrics]] table on its own: its unknown and missing keys all,
    then its first invalid value (msgspec stops at the first; keys that depend on each other, like a
    counter's name and its type, are checked together).
    """
    check = ConfigCheck(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        check.problems.append("config file not found")
        return check
    except OSError as error:
        check.problems.append(f"cannot read the config file: {error.strerror or error}")
        return check
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        check.problems.append(f"not valid TOML: {error}")
        return check
    top_level = _fields(Settings)
    check.problems += [f"{key}: unknown key (known: {', '.join(top_level)})" for key in data if key not in top_level]
    for name, struct in SECTIONS.items():
        if name in data:
            check.problems += _check_section(name, data[name], struct)
    if "log_level" in data:
        try:
            msgspec.convert({"log_level": data["log_level"]}, Settings)
        except msgspec.ValidationError as error:
            check.problems.append(_located("", error).removeprefix("."))
    if "metrics" in data:
        try:  # the namespace decides the custom metrics' full names; the default if the file's is invalid
            catalog = msgspec.convert(data.get("catalog", {}), CatalogSettings)
        except msgspec.ValidationError:
            catalog = CatalogSettings()
        check.problems += _check_metrics(data["metrics"], catalog)
    if check.problems:
        return check
    try:
        check.settings = load_settings(path)
    except ConfigError as error:  # a rule the checks above do not know of: still one named problem
        check.problems.append(str(error).removeprefix(f"{path}: "))
    return check
