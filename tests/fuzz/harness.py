"""Coverage-guided fuzzing (atheris) of decode -> catalog -> store -> render, for JSON and MessagePack bodies.

Every input goes through a fresh engine (the service's Pipeline, Ingest and Exposition, with the custom
metrics of the test scenarios and migration guides declared) once as JSON and once as MessagePack.
The invariants: nothing raises; each message applies events or is refused with a Reason and a detail;
every sample rendered parses. A broken invariant is an exception, which atheris reports as a crash and
saves. Run it with `python -m tests.fuzz` (tests/fuzz/__main__.py).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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


def corpus_files(*directories: Path) -> list[Path]:
    return sorted(path for directory in directories for path in directory.iterdir() if path.is_file())
