"""The benchmark picture, drawn from a real `aggregator bench --quick` run's JSON: every ratio against its target."""

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.picture import bars, draw

ROOT = Path(__file__).resolve().parents[2]
QUICK_RUN = ROOT / "tests" / "benchmarks" / "quick-run.json"


def _results() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(QUICK_RUN.read_text())
    return loaded


def test_each_target_becomes_a_ratio_bound_and_a_unit_target_is_divided_by_its_baseline() -> None:
    """`>= 0.9` bounds the ratio from below at 0.9; `<= 50 ms` on a figure whose baseline is 50 bounds it at 1."""
    drawn = {bar.name: bar for bar in bars(_results())}
    assert len(drawn) == 11
    single = drawn["1 event/message: ingest vs raw aio-pika consume+ack"]
    assert (single.limit, single.at_most) == (0.9, False)
    fresh = drawn["freshness p99 emit() -> /metrics at 10k events/s"]
    assert (fresh.limit, fresh.at_most, fresh.met) == (1.0, True, False)
    with pytest.raises(ValueError, match="cannot read the target"):
        bars({"figures": [{"name": "x", "target": "about 3", "baseline": 1, "ratio": 1, "met": True}]})


def test_the_svg_names_every_comparison_its_ratio_and_target_and_colours_by_met(tmp_path: Path) -> None:
    """Every figure's name and `ratio (target ...)` are in the SVG as text; one green bar per target met and one red
    per target missed; the freshness percentiles are drawn."""
    results = _results()
    svg = draw(results, tmp_path / "bench.svg").read_text()
    for bar in bars(results):
        assert bar.name.replace(">", "&gt;") in svg
        assert f"{bar.ratio:.3g} (target {'&lt;=' if bar.at_most else '&gt;='} {bar.limit:.3g})" in svg
    met = sum(1 for bar in bars(results) if bar.met)
    assert len(re.findall(r"fill: ?#2da44e", svg)) == met
    assert len(re.findall(r"fill: ?#cf222e", svg)) == len(bars(results)) - met
    assert "101.2 ms" in svg  # the p99 of this run
    assert "freshness at 10,000 events/s: 244 probes" in svg


def test_a_png_is_a_png_of_a_readable_size(tmp_path: Path) -> None:
    """PNG by the suffix: the signature, and a width and height a page can show."""
    data = draw(_results(), tmp_path / "bench.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 1000 <= width <= 2000
    assert 800 <= height <= 2000


def test_the_command_line_draws_from_a_saved_run_and_refuses_other_formats(tmp_path: Path) -> None:
    """`python -m benchmarks.picture RESULTS OUT` writes the file; `aggregator bench --picture x.gif` fails at once,
    before running anything."""
    out = tmp_path / "out.svg"
    drawn = subprocess.run([sys.executable, "-m", "benchmarks.picture", str(QUICK_RUN), str(out)],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert out.read_text().startswith("<?xml")
    refused = subprocess.run([sys.executable, "-m", "aggregator", "bench", "--picture", str(tmp_path / "x.gif")],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 2
    assert "name a .png or .svg file" in refused.stderr
    assert not (tmp_path / "x.gif").exists()


def test_bench_logs_each_step_and_draws_the_picture_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench command's wiring, with the measurements replaced by this saved run: each progress step is logged
    on stderr as it starts, the JSON is written, and --picture draws it."""
    from typer.testing import CliRunner

    from aggregator.cli import app
    from benchmarks import harness
    from benchmarks.harness import Figure, Report

    saved = _results()

    def run(url: str, quick: bool, progress: harness.Progress, only: list[str] | None = None) -> Report:
        progress("first step")
        progress("second step")
        figures = [Figure(**figure) for figure in saved["figures"]]  # type: ignore[attr-defined]
        return Report(saved["machine"], "aggregator bench --quick", figures, saved["extra"])  # type: ignore[arg-type]

    monkeypatch.setattr(harness, "run", run)
    output, picture = tmp_path / "results.json", tmp_path / "results.png"
    result = CliRunner().invoke(app, ["bench", "--quick", "--output", str(output), "--picture", str(picture)])
    assert result.exit_code == 0, result.output
    assert "first step" in result.stderr
    assert "second step" in result.stderr
    assert json.loads(output.read_text())["figures"] == saved["figures"]
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert f"picture: {picture}" in result.stdout
