"""Reading the deployment files: compose.yaml and its variables, the Dockerfile, Grafana dashboards, PromQL names."""

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from aggregator.config import load_settings
from aggregator.ingest import Ingest
from aggregator.readview import SERIES_NAME
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import HistogramFamily, Store

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
# The Compose Specification's JSON schema (github.com/compose-spec/compose-spec, schema/compose-spec.json).
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
AGGREGATOR_CONFIG = REPO / "deploy" / "tickbus.toml"
# Where compose.yaml reads its secrets from (scripts/web-secrets writes them there; git ignores them).
SECRETS_DIR = REPO / "secrets"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "tickbus.yaml"

# Compose's interpolation: $$ is a literal $, ${NAME}, ${NAME:-default}, ${NAME-default}, $NAME.
_COMPOSE_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>\{[^}]*\}))"
)


def compose_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def compose_variables(value: Any) -> dict[str, str | None]:
    """Every variable compose.yaml interpolates, with its default (None when it has none)."""
    found: dict[str, str | None] = {}
    if isinstance(value, dict):
        for item in value.values():
            found.update(compose_variables(item))
    elif isinstance(value, list):
        for item in value:
            found.update(compose_variables(item))
    elif isinstance(value, str):
        for match in _COMPOSE_VARIABLE.finditer(value):
            if match["other"]:
                raise ValueError(f"unsupported interpolation {match[0]!r} in {value!r}")
            name = match["name"] or match["plain"]
            if name:
                found[name] = match["default"] if match["op"] else None
    return found


def interpolate(value: Any, environment: Mapping[str, str]) -> Any:
    """`value` with compose's variables replaced as `docker compose` does with this environment."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["other"]:
            raise ValueError(f"unsupported interpolation {match[0]!r}")
        name = match["name"] or match["plain"]
        current = environment.get(name)
        if match["op"] == ":-" and not current:
            return str(match["default"])
        if match["op"] == "-" and current is None:
            return str(match["default"])
        if current is None:
            raise KeyError(f"compose.yaml needs ${name} and it has no default")
        return current

    return _COMPOSE_VARIABLE.sub(replace, value)


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """A service's bind mounts in short syntax: container path -> the repository path it shows."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts[target] = (REPO / source).resolve()
    return mounts


def named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's named volumes: container path -> volume name."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if not source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def service_secrets(document: Mapping[str, Any], name: str) -> dict[str, Path]:
    """The secrets service `name` mounts (short syntax): container path (/run/secrets/NAME) -> the file on the host."""
    declared = document.get("secrets", {})
    mounts = {}
    for secret in document["services"][name].get("secrets", []):
        assert isinstance(secret, str), f"{name}: secrets in short syntax"
        mounts[f"/run/secrets/{secret}"] = (REPO / declared[secret]["file"]).resolve()
    return mounts


def host_path(service: Mapping[str, Any], container_path: str) -> Path:
    """The repository file a container path of `service` shows through its bind mounts."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda item: -len(item[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise KeyError(f"{container_path} is not inside a bind mount of the service")


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for every instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (CMD, ENTRYPOINT, HEALTHCHECK ... CMD)."""
    words = json.loads(arguments)
    assert isinstance(words, list)
    assert all(isinstance(word, str) for word in words)
    return words


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for assignment in arguments.split():
                name, _, value = assignment.partition("=")
                env[name] = value
    return env


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON file by file name."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


GRAFANA_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<plain>\w+))")


def variable_references(text: str) -> set[str]:
    return {match["braced"] or match["plain"] for match in GRAFANA_VARIABLE.finditer(text)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}, ${name:format}) by `values`; unknown ones raise KeyError."""
    return GRAFANA_VARIABLE.sub(lambda match: values[match["braced"] or match["plain"]], text)


def variable_values(dashboard: Mapping[str, Any], rate_interval: str) -> dict[str, str]:
    """What Grafana puts for each variable when everything is selected, plus $__rate_interval."""
    values = {"__rate_interval": rate_interval}
    for variable in dashboard["templating"]["list"]:
        values[variable["name"]] = variable["allValue"]
    return values


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"(?<![\w:$])[A-Za-z_:][A-Za-z0-9_:]*")
_METRIC_PREFIXES = ("trading_", "tickbus_", "process_")
_PLAIN_METRICS = frozenset({"up", "ALERTS"})


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: trading_*, tickbus_*, process_*, recorded (a:b:c), up and ALERTS."""
    bare = _STRINGS.sub('""', expr)
    names = set()
    for token in _IDENTIFIER.findall(bare):
        if token.startswith(_METRIC_PREFIXES) or ":" in token or token in _PLAIN_METRICS:
            names.add(token)
    return names


def family_of(name: str, histograms: set[str]) -> str:
    """The family a sample name belongs to (a histogram's _bucket, _count and _sum belong to the histogram)."""
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def aggregator_families(config: Path = AGGREGATOR_CONFIG) -> tuple[set[str], set[str]]:
    """(every family the aggregator serves with this config, the histograms among them), from the code itself."""
    settings = load_settings(config)
    store = Store()
    ingest = Ingest(settings.catalog, settings.metrics, store, SelfMetrics(store))
    names = set(store.families) | {ingest.sources.source_up_name, SERIES_NAME}
    histograms = {name for name, family in store.families.items() if isinstance(family, HistogramFamily)}
    return names, histograms
