"""docs/metrics.md is generated from the catalog and must be current."""

from pathlib import Path

from aggregator.catalog import BUILTIN_CATALOG
from aggregator.catalogdoc import render_catalog
from aggregator.config import CustomMetric, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_committed_catalog_doc_is_current() -> None:
    """Regenerate with `aggregator catalog --output docs/metrics.md` if this fails."""
    assert (ROOT / "docs" / "metrics.md").read_text() == render_catalog(Settings())


def test_catalog_doc_lists_every_metric_and_custom_ones() -> None:
    """Every built-in spec appears with its namespace, and a config's custom metrics get their own section."""
    settings = Settings(metrics=[CustomMetric(name="cache_hits_total", type="counter", help="Cache hits.")])
    text = render_catalog(settings)
    for specs in BUILTIN_CATALOG.values():
        for spec in specs:
            assert f"`trading_{spec.name}`" in text
    assert "| `trading_cache_hits_total` | counter | source | Cache hits. |" in text
    assert "`tickbus_events_rejected_total`" in text
