"""A bounded coverage-guided fuzz run (atheris) over decode -> catalog -> store -> render finds nothing, and the
exposition of everything it tried passes prometheus_client's parsers and `promtool check metrics`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.pipeline import Outcome
from tests.fuzz.harness import CORPUS, ROOT, Engine, check_outcome, corpus_files, declared_metrics, exercise
from tests.fuzz.seeds import DICTIONARY, SEED_PREFIX, dictionary, seeds
from tests.support.prometheus import ensure_prometheus

# Half a minute by default; TICKBUS_FUZZ_SECONDS sets more for a hunt (or less on a slow machine).
FUZZ_SECONDS = int(os.environ.get("TICKBUS_FUZZ_SECONDS", "30"))


def test_the_committed_seeds_are_what_the_seed_script_makes() -> None:
    """tests/fuzz/corpus holds exactly the seeds `python -m tests.fuzz.seeds` writes, and its dictionary."""
    committed = {path.name.removeprefix(SEED_PREFIX): path.read_bytes() for path in CORPUS.glob(f"{SEED_PREFIX}*")}
    assert committed == seeds()
    assert DICTIONARY.read_text(encoding="utf-8") == dictionary()
    kinds = {name.split(".")[0] for name in committed if name.endswith(".msgpack")}
    assert len(kinds) >= 10, "one MessagePack seed per event kind"


def test_the_harness_checks_can_fail() -> None:
    """A message neither applied nor refused, or a sample line a parser refuses, is a crash to the harness."""
    with pytest.raises(AssertionError, match="neither applied nor refused"):
        check_outcome(Outcome())
    engine = Engine.new(declared_metrics())
    original = engine.exposition.render
    engine.exposition.render = lambda openmetrics=False: original(openmetrics) + b'broken{label="x} 1\n'  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="could not convert"):
        engine.render()


def test_every_corpus_input_applies_or_is_refused_with_a_reason() -> None:
    """The committed corpus (seeds and what fuzzing found) replays through the harness without a crash."""
    metrics = declared_metrics()
    inputs = corpus_files(CORPUS)
    assert len(inputs) >= 90
    for path in inputs:
        exercise(path.read_bytes(), metrics).check_whole()


def test_a_bounded_fuzz_run_finds_nothing_and_its_exposition_passes_promtool(tmp_path: Path) -> None:
    """About a minute of atheris from the committed corpus: no crash, no broken invariant, no timeout. Then every
    input of the corpus and of the run, through one engine as a long-lived aggregator takes them, renders an
    exposition that both parsers read and `promtool check metrics` passes."""
    ensure_prometheus()
    found = tmp_path / "found"
    found.mkdir()
    # The run is measured by the fuzzer's own coverage; the suite's coverage hooks would only slow it down.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    command = [
        sys.executable, "-m", "tests.fuzz",
        f"-max_total_time={FUZZ_SECONDS}", "-max_len=65536", "-timeout=20", "-rss_limit_mb=2048",
        f"-dict={DICTIONARY}", f"-artifact_prefix={tmp_path}/", str(found), str(CORPUS),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=FUZZ_SECONDS + 180, check=False
    )
    artifacts = sorted(path.name for path in tmp_path.iterdir() if path.is_file())
    assert result.returncode == 0, f"the fuzzer found {artifacts}:\n{result.stderr[-6000:]}"
    assert artifacts == []
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done, result.stderr[-3000:]
    assert int(done[1]) >= 20 * FUZZ_SECONDS, f"only {done[1]} runs in {done[2]} s: is the harness that slow?"
    engine = Engine.new(declared_metrics())
    for path in corpus_files(CORPUS, found):
        engine.feed(path.read_bytes())
    text, _ = engine.check_whole()
    assert b"trading_orders_total{" in text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=120, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
