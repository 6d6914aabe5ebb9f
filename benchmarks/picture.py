"""A picture of a benchmark run (`aggregator bench --output`'s JSON): each ratio against its target, and freshness.

`python -m benchmarks.picture bench-results.json bench.svg` draws one from a saved run; `aggregator bench --picture`
draws one after running. PNG or SVG by the file's suffix.
"""

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = (".png", ".svg")
_TARGET = re.compile(r"^\s*(<=|>=)\s*([0-9.]+)\s*(\S*)\s*$")


@dataclass(frozen=True)
class Bar:
    """One comparison as drawn: its ratio and the ratio its target allows, and which way is better."""

    name: str
    ratio: float
    limit: float
    at_most: bool
    met: bool
    label: str


def bars(results: dict[str, Any]) -> list[Bar]:
    """Each figure's ratio and the ratio its target sets.

    A target with a unit (`<= 50 ms`) bounds the figure itself, so in ratio terms it is the bound over the baseline.
    """
    drawn = []
    for figure in results["figures"]:
        match = _TARGET.match(str(figure["target"]))
        if match is None:
            raise ValueError(f"{figure['name']}: cannot read the target {figure['target']!r}")
        at_most, bound, unit = match[1] == "<=", float(match[2]), match[3]
        limit = bound / float(figure["baseline"]) if unit else bound
        label = f"{figure['ours']:,.1f} vs {figure['baseline']:,.1f} {figure['unit']}"
        drawn.append(Bar(figure["name"], float(figure["ratio"]), limit, at_most, bool(figure["met"]), label))
    return drawn


def draw(results: dict[str, Any], output: Path) -> Path:
    """Write the picture of `results` to `output` (.png or .svg); returns the path written."""
    if output.suffix.lower() not in FORMATS:
        raise ValueError(f"{output}: the picture is written as PNG or SVG (a .png or .svg file name)")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in SVG: searchable, and smaller
    from matplotlib import pyplot

    drawn = bars(results)
    freshness = results.get("extra", {}).get("freshness")
    figure, (ratios, fresh) = pyplot.subplots(
        2, 1, figsize=(11, 0.55 * len(drawn) + 4.5), gridspec_kw={"height_ratios": [len(drawn), 3]}
    )
    rows = list(range(len(drawn)))[::-1]
    colours = ["#2da44e" if bar.met else "#cf222e" for bar in drawn]
    ratios.barh(rows, [bar.ratio for bar in drawn], color=colours, height=0.6)
    for row, bar in zip(rows, drawn, strict=True):
        ratios.plot([bar.limit, bar.limit], [row - 0.4, row + 0.4], color="black", linewidth=2)
        ratios.annotate(
            f"{bar.ratio:.3g} ({'target <= ' if bar.at_most else 'target >= '}{bar.limit:.3g}); {bar.label}",
            (max(bar.ratio, bar.limit), row),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ratios.set_yticks(rows, [bar.name for bar in drawn], fontsize=8)
    ratios.set_xscale("log")
    ratios.set_xlim(right=max([bar.ratio for bar in drawn] + [bar.limit for bar in drawn]) * 40)
    ratios.set_xlabel("tickbus / baseline (log scale); black tick: the target; green: met, red: not met")
    ratios.set_title(f"tickbus benchmarks: {results.get('command', 'aggregator bench')}", fontsize=10)
    if freshness:
        names = ["p50", "p99", "max"]
        values = [freshness["p50_ms"], freshness["p99_ms"], freshness["max_ms"]]
        fresh.bar(names, values, color="#0969da", width=0.5)
        for index, value in enumerate(values):
            fresh.annotate(f"{value:.1f} ms", (index, value), xytext=(0, 3), textcoords="offset points", ha="center")
        fresh.axhline(50.0, color="black", linestyle="--", linewidth=1)
        fresh.set_ylim(0, max([*values, 50.0]) * 1.25)
        fresh.set_ylabel("emit() -> /metrics (ms)")
        fresh.set_title(
            f"freshness at 10,000 events/s: {freshness['probes']:.0f} probes (dashed: the 50 ms p99 target)",
            fontsize=10,
        )
    else:
        fresh.set_axis_off()
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    pyplot.close(figure)
    return output


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.picture RESULTS.json PICTURE.png|PICTURE.svg", file=sys.stderr)
        return 2
    source, output = Path(argv[0]), Path(argv[1])
    try:
        print(draw(json.loads(source.read_text(encoding="utf-8")), output))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
