"""Coverage-guided fuzzing (atheris) of decode -> catalog -> store -> render, for JSON and MessagePack bodies.

Every input goes through a fresh engine (the service's Pipeline, Ingest and Exposition, with the custom
metrics of the test scenarios and migration guides declared) once as JSON and once as MessagePack.
The invariants: nothing raises; each message applies events or is refused with a Reason and a detail;
every sample rendered parses. A broken invariant is an exception, which atheris reports as a crash and
saves. Run it with `python -m tests.fuzz` (tests/fuzz/__main__.py).
"""

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from aggregator.config import CatalogSettings, CustomMetric, Settings, load_settings
from aggregator.dedup import RecentIds
from aggregator.exposition import Exposition
from aggregator.ingest import Ingest
from aggregator.pipeline import Outcome, Pipeline
from aggregator.readview import ReadView
from aggregator.selfmetrics import SelfMetrics
from aggregator.store import Store
from schemas.events import EVENT_TYPES, KINDS
from schemas.wire import CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, Reason

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).with_name("corpus")
# The aggregator's clock in the harness: fixed, so that a crash replays exactly (seeds are stamped before it).
NOW = 1_750_000_000.0
CONTENT_TYPES = (CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK)
CONFIGS = (
    ROOT / "deploy" / "tickbus.toml",
    ROOT / "tests" / "scenarios" / "desk.toml",
    *sorted((ROOT / "docs" / "migration").glob("*.toml")),
)


def declared_metrics(configs: Iterable[Path] = CONFIGS) -> list[CustomMetric]:
    """The custom metrics these configs declare, the first declaration of a name winning."""
    found: dict[str, CustomMetric] = {}
    for path in configs:
        for metric in load_settings(path).metrics:
            found.setdefault(metric.name, metric)
    return list(found.values())


@dataclass
class Engine:
    """One aggregator's write path and renderer, as the service wires them, on a fixed clock."""

    pipeline: Pipeline
    exposition: Exposition

    @classmethod
    def new(cls, metrics: list[CustomMetric], settings: CatalogSettings | None = None) -> "Engine":
        store = Store()
        ingest = Ingest(settings or Settings().catalog, metrics, store, SelfMetrics(store))
        pipeline = Pipeline(ingest, RecentIds(0), clock=lambda: NOW)
        return cls(pipeline, Exposition(ReadView(store, ingest.sources, lambda: NOW), min_interval=0))

    def feed(self, body: bytes) -> list[Outcome]:
        """The body as each content type; every outcome checked."""
        outcomes = [self.pipeline.process(body, content_type, None) for content_type in CONTENT_TYPES]
        for outcome in outcomes:
            check_outcome(outcome)
        return outcomes

    def render(self) -> tuple[bytes, bytes]:
        """Both renderings; every sample line of the text one parsed by prometheus_client.

        The HELP and TYPE lines come from the catalog and the config, not from the input, so only the
        samples are parsed per input (parsing every family costs more than the rest of an input together);
        the fuzz test checks whole renderings with both parsers and `promtool check metrics`.
        """
        text, openmetrics = self.exposition.render(False), self.exposition.render(True)
        samples = "".join(line + "\n" for line in text.decode().splitlines() if not line.startswith("#"))
        assert sum(len(family.samples) for family in parse_text(samples)) == samples.count("\n")
        assert openmetrics.endswith(b"# EOF\n")
        return text, openmetrics

    def check_whole(self) -> tuple[bytes, bytes]:
        """Both renderings parsed whole, each by prometheus_client's parser for its format."""
        text, openmetrics = self.render()
        assert list(parse_text(text.decode())), "the text rendering holds no family"
        parsed = list(parse_openmetrics(openmetrics.decode()))  # type: ignore[no-untyped-call]
        assert parsed, "the OpenMetrics rendering holds no family"
        return text, openmetrics


def check_outcome(outcome: Outcome) -> None:
    """Applied, or refused with a reason that says why: never neither, never a refusal without words."""
    assert outcome.applied > 0 or outcome.refusals, "a message was neither applied nor refused"
    for refusal in outcome.refusals:
        assert isinstance(refusal.reason, Reason), refusal
        assert refusal.detail, refusal


def exercise(body: bytes, metrics: list[CustomMetric]) -> Engine:
    """One input through a fresh engine, both content types, then both renderings."""
    engine = Engine.new(metrics)
    engine.feed(body)
    engine.render()
    return engine


# Values at the edges of what the schema takes, for the structured mutator (NaN and infinities travel
# in MessagePack only: JSON has no literal for them).
EDGE_VALUES: tuple[Any, ...] = (
    0, -0.0, 1, -1, 0.5, 5e-324, 1e-300, 1e15, -1e15, 1e15 + 1, 2**53 + 1, 2**63, -(2**63), 2**64 - 1,
    math.nan, math.inf, -math.inf, True, False, None, "", "x" * 64, "x" * 65, 'a"b\\c\nd', "é", "\u2028",
    "le", "__name__", "source", "BTCUSDT", NOW, NOW + 3600, NOW - 86400 * 365, 0.001, [], {},
)  # fmt: skip
FIELDS = sorted({"kind", "labels", *(name for event in EVENT_TYPES for name in event.__struct_fields__)})


def _decode_any(data: bytes) -> tuple[Any, bool] | None:
    """The body as Python objects and whether it was MessagePack, or None when it is neither format."""
    for msgpack, decode in ((False, msgspec.json.decode), (True, msgspec.msgpack.decode)):
        try:
            return decode(data), msgpack
        except (msgspec.DecodeError, RecursionError):
            continue
    return None


def _containers(value: Any) -> list[Any]:
    """Every dict and list inside `value`, itself included."""
    found: list[Any] = []
    stack = [value]
    while stack and len(found) < 10_000:
        item = stack.pop()
        if isinstance(item, dict | list):
            found.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return found


def _mutate_list(target: list[Any], choice: int, rng: random.Random) -> None:
    if target and choice < 4:
        target[rng.randrange(len(target))] = rng.choice(EDGE_VALUES + tuple(target))
    elif target and choice == 4:
        del target[rng.randrange(len(target))]
    else:
        target.append(rng.choice(target) if target else {"kind": rng.choice(KINDS)})


def _mutate_object(target: dict[Any, Any], choice: int, rng: random.Random) -> None:
    if choice == 1 and target:
        target[rng.choice(list(target))] = rng.choice(EDGE_VALUES)
    elif choice == 2:
        target[rng.choice(FIELDS)] = rng.choice(EDGE_VALUES + tuple(target.values()))
    elif choice == 3 and target:
        del target[rng.choice(list(target))]
    elif choice == 4:
        target["kind"] = rng.choice(KINDS)
    elif choice == 5:
        labels = target.setdefault("labels", {})
        if isinstance(labels, dict):
            name = rng.choice(("reason", "account", "cache", "result", "le", "x" * 65, "bad-name", ""))
            labels[name] = rng.choice(("drawdown", "main", "hit", "", "a b", "x" * 64, "x" * 65, 'q"uote', "back\\"))
    else:
        target["ts"] = rng.choice((NOW - rng.random() * 1000, NOW + 400, NOW * 1000, 0, -1))


def mutate_structure(data: bytes, rng: random.Random) -> bytes | None:
    """One change an event author could make: a value, a field, a kind, a label, the batch around it.

    Returns the body re-encoded (in its format, now and then in the other), or None when `data` is not
    JSON or MessagePack; the caller then mutates bytes.
    """
    decoded = _decode_any(data)
    if decoded is None:
        return None
    document, msgpack = decoded
    containers = _containers(document)
    choice = rng.randrange(7)
    if not containers or choice == 0:
        document = [document] * rng.randint(1, 3) if rng.random() < 0.5 else rng.choice(EDGE_VALUES)
    else:
        target = rng.choice(containers)
        if isinstance(target, list):
            _mutate_list(target, choice, rng)
        else:
            _mutate_object(target, choice, rng)
    if rng.random() < 0.1:
        msgpack = not msgpack
    try:
        return msgspec.msgpack.encode(document) if msgpack else msgspec.json.encode(document)
    except (TypeError, ValueError, OverflowError):  # a value the other format cannot carry
        return None


def corpus_files(*directories: Path) -> list[Path]:
    return sorted(path for directory in directories for path in directory.iterdir() if path.is_file())
