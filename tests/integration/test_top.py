"""`aggregator top` as a person runs it: in a terminal (tmux), against a live aggregator over the real broker."""

import json
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import RawMessage, publish_raw
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import wait_for

ROOT = Path(__file__).resolve().parents[2]
StartAggregator = Callable[..., AggregatorProcess]


class Terminal:
    """A tmux server of its own (a private socket) running one command in a 140x45 window."""

    def __init__(self, command: str) -> None:
        self.socket = f"tickbus-top-{uuid.uuid4().hex[:8]}"
        self.command = command

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["tmux", "-L", self.socket, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> None:
        started = self.tmux("new-session", "-d", "-s", "top", "-x", "140", "-y", "45", self.command)
        assert started.returncode == 0, started.stderr

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top").returncode == 0

    def stop(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def tmux_installed() -> None:
    """tmux from scripts/install-tmux."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-tmux")], capture_output=True, text=True,
                            timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.fixture
def terminal(tmux_installed: None) -> Iterator[Callable[[str], Terminal]]:
    made: list[Terminal] = []

    def make(command: str) -> Terminal:
        made.append(Terminal(command))
        made[-1].start()
        return made[-1]

    yield make
    for each in made:
        each.stop()


def _signal(source: str, **fields: object) -> bytes:
    event = {"kind": "signal", "ts": time.time(), "source": source, "strategy": "s", "symbol": "BTCUSDT",
             "side": "buy", **fields}  # fmt: skip
    return json.dumps(event).encode()


def test_top_shows_live_events_sources_and_rejections_and_quits_on_ctrl_c(
    names: Names, start_aggregator: StartAggregator, terminal: Callable[[str], Terminal], tmp_path: Path
) -> None:
    """Started before any traffic, the screen then shows the events/s of a source that publishes, a rejection
    with its reason and detail, and the aggregator consuming; Ctrl-C ends it with exit status 0."""
    aggregator = start_aggregator(names)
    token = uuid.uuid4().hex[:6]
    busy, broken = f"busy-{token}", f"broken-{token}"
    marker = tmp_path / "exit-status"
    top = [sys.executable, "-m", "aggregator", "top", aggregator.url, "--interval", "0.5"]
    screen = terminal(f"{shlex.join(top)}; echo $? > {shlex.quote(str(marker))}")
    wait_for(lambda: "consuming" in screen.screen(), timeout=20, what="top's first screen")
    assert busy not in screen.screen()

    for _ in range(8):
        publish_raw(names.exchange, [RawMessage(_signal(busy), "signal") for _ in range(25)])
        time.sleep(0.25)
    publish_raw(names.exchange, [RawMessage(_signal(broken, side="sideways"), "signal")])

    def shows_everything() -> str | None:
        text = screen.screen()
        return text if busy in text and "invalid_event" in text and broken in text else None

    text = wait_for(shows_everything, timeout=20, what="top to show the source and the rejection")
    source_line = next(line for line in text.splitlines() if busy in line)
    assert source_line.split()[3] == "200"  # total events from the busy source
    rejection_line = next(line for line in text.splitlines() if "invalid_event" in line)
    assert f"from {broken} / signal" in rejection_line
    assert "sideways" in text  # the detail names the bad value
    assert "events by kind" in text
    assert "checkpoint" in text

    screen.tmux("send-keys", "-t", "top", "C-c")
    wait_for(marker.exists, timeout=10, what="top to exit on Ctrl-C")
    assert marker.read_text().strip() == "0"


def test_top_once_against_an_address_with_nothing_listening_says_so(tmp_path: Path) -> None:
    """No aggregator at the address: one line naming the address and the reason, exit status 1, no traceback."""
    result = subprocess.run([sys.executable, "-m", "aggregator", "top", "http://127.0.0.1:9", "--once"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "cannot read http://127.0.0.1:9/metrics" in result.stderr
    assert "Traceback" not in result.stderr
