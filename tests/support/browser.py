"""A headless Chromium driven by Selenium: Debian's chromium and chromium-driver, from scripts/install-browser."""

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-browser"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def ensure_browser() -> tuple[str, str]:
    """Run scripts/install-browser; the paths of chromium and chromedriver."""
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"scripts/install-browser failed:\n{result.stdout}\n{result.stderr}"
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium, "chromium is not on PATH after scripts/install-browser"
    assert driver, "chromedriver is not on PATH after scripts/install-browser"
    return chromium, driver


@contextmanager
def headless_chromium() -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium (its own profile directory), quit afterwards."""
    chromium, driver = ensure_browser()
    with tempfile.TemporaryDirectory(prefix="tickbus-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        try:
            yield browser
        finally:
            browser.quit()
