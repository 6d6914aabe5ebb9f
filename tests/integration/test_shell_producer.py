"""Shell producers over the real broker into a real aggregator: `aggregator emit` and tickbus-emit.sh (amqp-publish)."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from schemas.wire import HEADER_REASON, HEADER_SOURCE
from tests.support.broker import drain
from tests.support.crosscheck import Tap, assert_same_as_python, desk_raw, send_python_reference
from tests.support.driver import ROOT
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scenario import DESK_CONFIG
from tests.support.scrape import total, value, wait_for

StartAggregator = Callable[..., AggregatorProcess]
TICKBUS_EMIT = ROOT / "producers" / "shell" / "tickbus-emit.sh"
AGGREGATOR = Path(sys.executable).parent / "aggregator"
ID_HEADER = "x-tickbus-message-id"


@pytest.fixture(scope="module", autouse=True)
def amqp_tools() -> None:
    """A fresh machine installs amqp-publish by itself (a no-op when it is there)."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-amqp-tools")], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr


def _words(event: dict[str, Any]) -> list[str]:
    """An event as the `KIND field=value...` words both shell producers take."""
    words = [event["kind"]]
    for name, field in event.items():
        if name == "labels":
            words += [f"labels.{label}={label_value}" for label, label_value in field.items()]
        elif isinstance(field, bool):
            words.append(f"{name}={str(field).lower()}")
        elif name != "kind":
            words.append(f"{name}={field}")
    return words


def _run_scenario_script(emit: str, names: Names, source: str, events: list[dict[str, Any]], tmp: Path) -> None:
    """Write the scenario as a shell script of one `emit KIND field=value...` line per event, and run it."""
    script = tmp / f"{source}.sh"
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f'emit() {{ {emit} "$@" >/dev/null; }}']
    lines += ["emit " + " ".join(shlex.quote(word) for word in _words(event)) for event in events]
    script.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKBUS_")}
    env |= {"TICKBUS_AMQP_URL": AMQP_URL, "TICKBUS_EXCHANGE": names.exchange, "TICKBUS_SOURCE": source}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_amqp_publish_script_desk_scenario_matches_the_python_emitter(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """tickbus-emit.sh sends the desk scenario as persistent JSON under each kind; /metrics equals Python's run."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    now = time.time()
    events = desk_raw(now)
    with Tap(names) as tap:
        send_python_reference(names, "py-ref", now)
        _run_scenario_script(shlex.quote(str(TICKBUS_EMIT)), names, "sh-desk", events, tmp_path)
        assert_same_as_python(aggregator, "sh-desk", "py-ref")
        messages = [message for message in tap.messages() if message.app_id != "py-ref"]

    assert [message.routing_key for message in messages] == [event["kind"] for event in events]
    ids = set()
    for message, event in zip(messages, events, strict=True):
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert json.loads(message.body) == {**event, "source": "sh-desk"}
        assert re.fullmatch(r"[0-9a-f]{12}-1", str(message.headers[ID_HEADER]))
        assert message.headers[HEADER_SOURCE] == "sh-desk"
        ids.add(message.headers[ID_HEADER])
    assert len(ids) == len(events)


def test_aggregator_emit_script_desk_scenario_matches_the_python_emitter(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """A shell script of `aggregator emit` lines sends the same scenario; /metrics equals the Python run."""
    aggregator = start_aggregator(names, config=DESK_CONFIG)
    now = time.time()
    with Tap(names) as tap:
        send_python_reference(names, "py-ref", now)
        _run_scenario_script(f"{shlex.quote(str(AGGREGATOR))} emit", names, "cli-desk", desk_raw(now), tmp_path)
        assert_same_as_python(aggregator, "cli-desk", "py-ref")
        messages = [message for message in tap.messages() if message.app_id == "cli-desk"]
    assert len(messages) == len(desk_raw(now))
    assert all(message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for message in messages)
    assert len({message.message_id for message in messages}) == len(messages)
    assert {message.headers[HEADER_SOURCE] for message in messages} == {"cli-desk"}


def test_amqp_publish_script_refuses_bad_words_and_reports_an_unreachable_broker(names: Names) -> None:
    """Bad kinds and non-numbers exit 2 before sending; an unreachable broker exits 1, password hidden."""

    def run(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TICKBUS_EMIT), *words], capture_output=True, text=True, timeout=30, check=False)

    unknown = run("--exchange", names.exchange, "telepathy", "x=1")
    assert unknown.returncode == 2
    assert "unknown kind 'telepathy'" in unknown.stderr
    not_a_number = run("--exchange", names.exchange, "signal", "strategy=m", "symbol=X", "side=buy", "confidence=high")
    assert not_a_number.returncode == 2
    assert "confidence must be a number" in not_a_number.stderr
    away = run("--url", "amqp://guest:secret@127.0.0.1:1/", "--source", "s", "error", "component=c", "error_type=e")
    assert away.returncode == 1
    assert "not sent" in away.stderr
    assert "secret" not in away.stderr
    assert away.stdout == ""
    typed = run("--dry-run", "--source", "s", "prediction", "model=m", "model_version=3", "probability=0.5",
                "correct=false", "message=line\none \"quoted\"")  # fmt: skip
    assert typed.returncode == 0
    event = json.loads(typed.stdout)
    assert event["model_version"] == "3"
    assert event["probability"] == 0.5
    assert event["correct"] is False
    assert event["message"] == 'line\none "quoted"'
    assert abs(event["ts"] - time.time()) < 60


def test_amqp_publish_script_does_not_validate_so_the_aggregator_dead_letters(
    names: Names, start_aggregator: StartAggregator
) -> None:
    """An out-of-range value goes out (exit 0) and comes back as a dead letter with reason invalid_event."""
    start_aggregator(names, config=DESK_CONFIG)
    result = subprocess.run(
        [str(TICKBUS_EMIT), "--exchange", names.exchange, "--source", "sh-bad", "signal", "strategy=m", "symbol=X",
         "side=buy", "confidence=1.5"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    dead = wait_for(lambda: drain(names.dead_letter_queue), timeout=20, what="the dead letter")
    assert [str(message.headers[HEADER_REASON]) for message in dead] == ["invalid_event"]
    assert json.loads(dead[0].body)["confidence"] == 1.5


def test_amqp_publish_with_the_id_header_counts_a_resend_once(names: Names, start_aggregator: StartAggregator) -> None:
    """amqp-publish cannot set message_id; the same x-tickbus-message-id header sent twice is applied once."""
    aggregator = start_aggregator(names)
    event = {"kind": "error", "ts": time.time(), "source": "cron", "component": "eod", "error_type": "late"}
    publish = [
        "amqp-publish", f"--url={AMQP_URL.removesuffix('/')}/%2f", f"--exchange={names.exchange}",
        "--routing-key=error", "--persistent", "--content-type=application/json",
        f"--header={ID_HEADER}: cron-eod-1", f"--body={json.dumps(event)}",
    ]  # fmt: skip
    for _ in range(2):
        assert subprocess.run(publish, capture_output=True, timeout=30, check=False).returncode == 0
    wait_for(lambda: value(aggregator.scrape(), "tickbus_messages_received_total") == 2, what="both messages")
    assert value(aggregator.scrape(), "tickbus_duplicate_messages_total") == 1
    assert total(aggregator.scrape(), "trading_errors_total", source="cron") == 1
