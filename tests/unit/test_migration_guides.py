"""The migration guides agree with their configs, their scenarios and the catalog; no broker needed."""

import shlex
import time
from typing import Any

import msgspec
import pytest

from aggregator.cli import parse_assignments
from aggregator.compiler import full_name
from aggregator.config import load_settings
from aggregator.ingest import Ingest
from aggregator.store import HistogramFamily
from schemas.events import Event
from tests.support.engine import make_ingest
from tests.support.migrations import (
    GUIDES,
    PROPOSALS,
    SYSTEMS,
    Migration,
    code_blocks,
    events_by_source,
    guide_rows,
    load,
    metric_names,
)

SOURCE_UP = "trading_source_up"


def _ingest(migration: Migration) -> Ingest:
    settings = load_settings(migration.config)
    return make_ingest(settings.catalog, settings.metrics)


def _sample_names(ingest: Ingest, family_names: set[str]) -> set[str]:
    names = set()
    for name in family_names:
        if isinstance(ingest.store.families[name], HistogramFamily):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def _served(migration: Migration) -> tuple[set[str], set[str]]:
    """Sample names of the built-in catalog (with trading_source_up) and of the config's custom metrics."""
    ingest = _ingest(migration)
    custom = {full_name("trading", metric.name) for metric in load_settings(migration.config).metrics}
    builtin = {name for name in ingest.store.families if name.startswith("trading_")} - custom
    return _sample_names(ingest, builtin) | {SOURCE_UP}, _sample_names(ingest, custom)


def _row_names(queries: tuple[str, ...]) -> set[str]:
    return set().union(*(metric_names(query) for query in queries))


@pytest.mark.parametrize("system", SYSTEMS)
def test_guide_table_and_scenario_list_the_same_metric_families(system: str) -> None:
    """The guide's table and the scenario's expectations name the same families of theirs, in the same order."""
    assert [row.metric for row in guide_rows(system)] == [row.metric for row in load(system).rows]


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_query_and_expectation_names_a_served_metric(system: str) -> None:
    """Each row has PromQL and expected samples, and both name only metrics the system's config serves."""
    migration = load(system)
    builtin, custom = _served(migration)
    served = builtin | custom
    for row in guide_rows(system):
        assert row.queries, f"{system}: no PromQL for {row.metric}"
        assert _row_names(row.queries), f"{system}: the PromQL for {row.metric} reads no tickbus metric"
        assert _row_names(row.queries) <= served, f"{system}: {row.metric} reads {_row_names(row.queries) - served}"
    for scenario_row in migration.rows:
        assert scenario_row.expect, f"{system}: nothing expected for {scenario_row.metric}"
        assert {sample.name for sample in scenario_row.expect} <= served


@pytest.mark.parametrize("system", SYSTEMS)
def test_via_column_says_where_each_row_comes_from(system: str) -> None:
    """Built-in rows read only catalog metrics; custom rows read a declared one; [Pn] marks exactly the stand-ins."""
    builtin, custom = _served(load(system))
    for row in guide_rows(system):
        names = _row_names(row.queries)
        assert row.via.split()[0] in {"built-in", "custom"}, f"{system}: {row.metric} via {row.via!r}"
        if row.via.startswith("built-in"):
            assert names <= builtin, f"{system}: built-in row {row.metric} reads custom {names - builtin}"
        else:
            assert names & custom, f"{system}: custom row {row.metric} reads no custom metric"
        unknown = row.proposals - set(PROPOSALS)
        assert not unknown, f"{system}: {row.metric} is marked {sorted(unknown)}, not a pending proposal (built in?)"
        for proposal, stand_ins in PROPOSALS.items():
            if names & stand_ins:
                assert proposal in row.proposals, f"{system}: {row.metric} uses a [{proposal}] stand-in unmarked"
            if proposal in row.proposals and stand_ins:
                assert names & stand_ins, f"{system}: {row.metric} is marked [{proposal}] but uses none of it"


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_scripted_event_is_accepted_by_the_catalog(system: str) -> None:
    """Applied in-process, no event of the scenario is refused (undeclared metric, wrong labels, bad value)."""
    migration = load(system)
    ingest = _ingest(migration)
    now = time.time()
    events = [event for events in events_by_source(migration, now).values() for event in events]
    assert len(events) == len(migration.events)
    assert ingest.apply(events, now) == []


def _emit_lines(system: str) -> list[list[str]]:
    return [
        shlex.split(line)
        for block in code_blocks(system, "sh")
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("aggregator emit ")
    ]


def _event_of(words: list[str]) -> Any:
    """The event an `aggregator emit KIND field=value ... [--source NAME]` command line would send."""
    kind, fields, source = words[2], [], "docs"
    rest = iter(words[3:])
    for word in rest:
        if word == "--source":
            source = next(rest)
        else:
            assert not word.startswith("--"), f"unexpected option {word}"
            fields.append(word)
    return msgspec.convert(parse_assignments(kind, fields, source), Event, strict=False)


@pytest.mark.parametrize("system", SYSTEMS)
def test_shell_examples_are_events_the_config_accepts(system: str) -> None:
    """Every `aggregator emit` line of the guide is a valid event that the system's aggregator applies."""
    lines = _emit_lines(system)
    assert lines, f"{system}: the guide has no `aggregator emit` example"
    ingest = _ingest(load(system))
    for words in lines:
        assert ingest.apply([_event_of(words)], time.time()) == [], shlex.join(words)


@pytest.mark.parametrize("guide", [*SYSTEMS, "README"])
def test_python_examples_compile(guide: str) -> None:
    """Every Python snippet in the migration docs is valid Python."""
    blocks = code_blocks(guide, "python")
    assert blocks, f"{guide}: no Python example"
    for block in blocks:
        compile(block, f"docs/migration/{guide}.md", "exec")


def test_readme_links_every_guide_and_config_with_its_counts() -> None:
    """The README's index links each guide and config and gives its table's built-in and custom counts."""
    readme = (GUIDES / "README.md").read_text(encoding="utf-8")
    for system in SYSTEMS:
        rows = guide_rows(system)
        builtin = sum(row.via.startswith("built-in") for row in rows)
        counts = f"| {len(rows)} | {builtin} | {len(rows) - builtin} |"
        assert f"[{system}.md]({system}.md) | [{system}.toml]({system}.toml) {counts}" in readme
