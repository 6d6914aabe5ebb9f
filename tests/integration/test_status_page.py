"""The status page in a real browser, over the real broker: it loads, then shows what was just emitted and refused."""

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.broker import RawMessage, publish_raw
from tests.support.browser import headless_chromium
from tests.support.process import AMQP_URL, AggregatorProcess, Names

StartAggregator = Callable[..., AggregatorProcess]


def _rows(browser: WebDriver, table: str) -> list[list[str]]:
    """The text of each cell of each body row of a table on the page."""
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    ]


def test_the_status_page_shows_a_source_just_emitted_and_a_rejection_just_sent(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """Open / in headless Chromium; then emit an event (`aggregator emit`) and publish an invalid one: without a
    reload, the page shows the source with its event, and the rejection with its reason, source and detail."""
    aggregator = start_aggregator(names)
    token = uuid.uuid4().hex[:8]
    good, bad = f"desk-{token}", f"broken-{token}"
    with headless_chromium() as browser:
        browser.get(f"{aggregator.url}/")
        wait = WebDriverWait(browser, 20, poll_frequency=0.2)
        wait.until(lambda b: b.find_element(By.ID, "readiness").text == "ready")
        assert "tickbus aggregator" in browser.title
        assert _rows(browser, "sources") == []
        links = {link.get_attribute("href") for link in browser.find_elements(By.CSS_SELECTOR, "nav a")}
        assert {f"{aggregator.url}/{path}" for path in ("metrics", "healthz", "readyz")} <= links

        emitted = subprocess.run(
            [sys.executable, "-m", "aggregator", "emit", "order", "symbol=BTCUSDT", "side=buy", "status=filled",
             "--source", good, "--amqp-url", AMQP_URL, "--exchange", names.exchange],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert emitted.returncode == 0, emitted.stderr
        invalid = {"kind": "signal", "ts": time.time(), "source": bad, "strategy": "s", "symbol": "BTCUSDT",
                   "side": "buy", "confidence": 2.5}  # fmt: skip
        publish_raw(names.exchange, [RawMessage(json.dumps(invalid).encode(), "signal")])

        def shown(b: WebDriver) -> bool:
            sources = {row[0]: row for row in _rows(b, "sources")}
            reasons = {row[0]: row for row in _rows(b, "rejections")}
            return good in sources and "invalid_event" in reasons

        try:
            wait.until(shown)
        finally:
            browser.save_screenshot(str(tmp_path / "status.png"))
        source = {row[0]: row for row in _rows(browser, "sources")}[good]
        assert source[-1] == "1"  # total events from this source
        assert source[4].endswith("ago")  # last seen
        rejection = {row[0]: row for row in _rows(browser, "rejections")}["invalid_event"]
        assert rejection[1:3] == ["1", "1"]  # in the last minute, and since start
        assert rejection[4] == f"{bad} / signal"
        assert "confidence" in rejection[5]
        assert browser.find_element(By.ID, "rejections-recent").text == "1"
        assert browser.find_element(By.ID, "error").is_displayed() is False


def test_status_json_bounds_and_filters_the_sources(names: Names, start_aggregator: StartAggregator) -> None:
    """/status.json lists every known source up to `limit`, filtered by name, with their counts; the page's data."""
    aggregator = start_aggregator(names)
    token = uuid.uuid4().hex[:6]
    events = [
        {"kind": "error", "ts": time.time(), "source": f"many-{token}-{index}", "component": "c", "error_type": "e"}
        for index in range(30)
    ]
    publish_raw(names.exchange, [RawMessage(json.dumps(events).encode(), "batch")])

    def status(query: str) -> dict[str, object]:
        with urllib.request.urlopen(f"{aggregator.url}/status.json?{query}", timeout=10) as response:
            assert response.headers["Cache-Control"] == "no-store"
            loaded: dict[str, object] = json.loads(response.read())
            return loaded

    deadline = time.monotonic() + 20
    while status("limit=0")["sources"]["count"] < 30:  # type: ignore[index]
        assert time.monotonic() < deadline, "the 30 sources never appeared"
        time.sleep(0.2)
    limited = status("limit=5")["sources"]
    assert limited["count"] == 30  # type: ignore[index]
    assert len(limited["rows"]) == 5  # type: ignore[index]
    filtered = status(f"filter=many-{token}-1&limit=100")["sources"]
    names_shown = sorted(row["source"] for row in filtered["rows"])  # type: ignore[index]
    expected = sorted(f"many-{token}-{index}" for index in range(30) if str(index).startswith("1"))
    assert names_shown == expected
    assert {row["total"] for row in filtered["rows"]} == {1.0}  # type: ignore[index]
