"""The five reference systems' migrations: scripted scenarios, hand-computed expected samples, guide tables.

A scenario (`tests/migrations/<system>.json`) holds the events one system's components emit and, per
row of its migration guide (`docs/migration/<system>.md`), the samples /metrics must show. Times in
a scenario are seconds before now: `ts` and `started_at` of events, `value_ago` of a custom metric
whose value is a timestamp, and `{"ago": N}` as an expected value.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import Event
from tests.support.scrape import Samples

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "migrations"
GUIDES = ROOT / "docs" / "migration"
SYSTEMS = ("atra", "mastertrade", "aria-pro", "ai-agent", "metrics-pipeline")

# Custom metrics standing in for proposed built-ins, by proposal: a guide row using one is marked `[Pn]`.
# P1 (dependency kind), P4 (process resources on the heartbeat), P5 (portfolio total_return) and P6 (signal
# decision latency) are built in now; a custom metric with a built-in's name is refused at startup.
PROPOSALS: dict[str, frozenset[str]] = {
    "P2": frozenset(
        {
            "trading_model_accuracy_ratio",
            "trading_model_drift_score",
            "trading_model_training_seconds_bucket",
            "trading_model_training_seconds_sum",
            "trading_model_training_seconds_count",
        }
    ),
    "P3": frozenset({"trading_risk_checks_total", "trading_kill_switch_active"}),
}

_METRIC_NAME = re.compile(r"\b(?:trading|tickbus)_[A-Za-z0-9_]+\b")
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_FENCED_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class ExpectedSample:
    name: str
    labels: dict[str, str]
    value: float | None = None
    ago: float | None = None

    def key(self) -> tuple[str, frozenset[tuple[str, str]]]:
        return self.name, frozenset(self.labels.items())

    def resolve(self, now: float) -> float:
        if self.ago is not None:
            return now - self.ago
        assert self.value is not None
        return self.value


@dataclass(frozen=True)
class Row:
    """One row of a guide's table: their metric and the samples that answer it."""

    metric: str
    note: str
    expect: tuple[ExpectedSample, ...]


@dataclass(frozen=True)
class Migration:
    system: str
    title: str
    events: tuple[dict[str, Any], ...]
    rows: tuple[Row, ...]

    @property
    def config(self) -> Path:
        return GUIDES / f"{self.system}.toml"

    @property
    def guide(self) -> Path:
        return GUIDES / f"{self.system}.md"


def load(system: str) -> Migration:
    """The scenario of one system, as written in tests/migrations/<system>.json."""
    data = json.loads((SCENARIOS / f"{system}.json").read_text(encoding="utf-8"))
    rows = []
    for row in data["rows"]:
        expect = []
        for sample in row["expect"]:
            value = sample["value"]
            if isinstance(value, dict):
                expect.append(ExpectedSample(sample["name"], sample["labels"], ago=float(value["ago"])))
            else:
                expect.append(ExpectedSample(sample["name"], sample["labels"], value=float(value)))
        rows.append(Row(row["metric"], row["note"], tuple(expect)))
    return Migration(system, data["system"], tuple(data["events"]), tuple(rows))


def events_by_source(migration: Migration, now: float) -> dict[str, list[Any]]:
    """The scenario's events as typed events, grouped by source in scenario order, times made absolute."""
    grouped: dict[str, list[Any]] = {}
    for raw in migration.events:
        event = dict(raw)
        event["ts"] = now - event["ts"]
        if "started_at" in event:
            event["started_at"] = now - event["started_at"]
        if "value_ago" in event:
            event["value"] = now - event.pop("value_ago")
        grouped.setdefault(event["source"], []).append(msgspec.convert(event, Event))
    return grouped


def expected_samples(migration: Migration, now: float) -> Samples:
    """Every row's expected samples; a sample named by several rows must be expected alike by each."""
    samples: Samples = {}
    for row in migration.rows:
        for sample in row.expect:
            value = sample.resolve(now)
            previous = samples.setdefault(sample.key(), value)
            assert previous == value, f"{migration.system}: rows disagree on {sample.name}{sample.labels}"
    return samples


@dataclass(frozen=True)
class GuideRow:
    """One row of a guide's mapping table."""

    metric: str
    via: str
    event: str
    queries: tuple[str, ...]

    @property
    def proposals(self) -> set[str]:
        return set(re.findall(r"\[(P\d)\]", self.via))


def guide_rows(system: str) -> list[GuideRow]:
    """The rows of every table in docs/migration/<system>.md whose header starts with `Their metric`."""
    rows: list[GuideRow] = []
    in_table = False
    for line in (GUIDES / f"{system}.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in _CELL_SEPARATOR.split(line.strip())[1:-1]]
        if cells and cells[0] == "Their metric":
            in_table = True
            continue
        if not in_table or set(cells[0]) <= {"-", ":"}:
            continue
        assert len(cells) == 4, f"{system}: a table row needs 4 cells: {line}"
        queries = tuple(span.replace("\\|", "|") for span in _CODE_SPAN.findall(cells[3]))
        rows.append(GuideRow(cells[0].replace("`", ""), cells[1], cells[2], queries))
    return rows


def metric_names(promql: str) -> set[str]:
    """The tickbus metric names a PromQL expression reads (outside string literals)."""
    return set(_METRIC_NAME.findall(_STRING_LITERAL.sub('""', promql)))


def exposed_names(samples: Samples) -> set[str]:
    """The sample names present in a scrape (histograms as their _bucket, _sum and _count series)."""
    return {name for name, _ in samples}


def code_blocks(system_or_readme: str, language: str) -> list[str]:
    """The fenced code blocks of one language in a guide (or README)."""
    text = (GUIDES / f"{system_or_readme}.md").read_text(encoding="utf-8")
    return [body for lang, body in _FENCED_BLOCK.findall(text) if lang == language]
