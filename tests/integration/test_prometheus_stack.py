"""The shipped Prometheus config, rules and Grafana queries against a real Prometheus scraping a real aggregator.

Prometheus (Debian's package, installed by scripts/install-prometheus when missing) runs on a free
loopback port with a copy of deploy/prometheus whose only changes are a 1s scrape and evaluation
interval, the test aggregators as targets, the compose secrets read from a directory that
scripts/web-secrets made, and `for: 0s` on the alerts (their real durations are proven by
`promtool test rules`, see tests/unit/test_deploy_files.py). The aggregators serve the web config
that script made, so Prometheus scrapes them as compose does: over TLS, with basic auth. Events go
through the real RabbitMQ. Also here: the image's entry command, run with compose's environment and
secrets, answers the compose healthcheck.
"""

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from producers.emitter import Emitter, EmitterSettings
from schemas.events import Order
from tests.support import incidents
from tests.support.broker import publish_raw
from tests.support.composebroker import amqp_secret_names
from tests.support.deploy import (
    AGGREGATOR_CONFIG,
    SECRETS_DIR,
    compose_document,
    dashboards,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    final_stage,
    host_path,
    interpolate,
    panel_queries,
    service_secrets,
    substitute,
    variable_values,
)
from tests.support.incidents import Phase
from tests.support.process import AMQP_URL, AggregatorProcess, Names, free_port
from tests.support.prometheus import (
    AGGREGATOR_JOB,
    SECRETS_MOUNT,
    SELF_JOB,
    PrometheusServer,
    ensure_prometheus,
    rules,
    write_test_setup,
)
from tests.support.scrape import Samples, scrape, total, value, wait_for
from tests.support.web import WEB_CONFIG, WebClient, make_web_secrets

INTERVAL = "1s"
EVALUATION_SECONDS = 1.0
# What Grafana would put for $__rate_interval over a short range with this scrape interval.
RATE_INTERVAL = "1m"
# The test aggregator's staleness window (deploy/tickbus.toml says 30s).
STALENESS_SECONDS = 5
# How many messages wait in the queue when the aggregator comes back: past TickbusQueueBacklog's 5000 for
# longer than a queue-depth probe (every 5 s) even on a slow machine, which drains 9,000 in under two seconds
# (the first probe could then already see fewer than 5000).
BACKLOG_MESSAGES = 30_000
EMITTER_SOURCE = "e2e-emitter"
# Recording rules about sources held by two replicas at once (shards): nothing with one aggregator.
ONLY_WITH_SEVERAL_REPLICAS = {"instance_source:trading_source_last_seen_timestamp_seconds:superseded"}

# Which test trips which alert. The partition is checked, so a new alert must be placed somewhere.
INCIDENT_ALERTS = {
    "TradingSourceSilent",
    "TradingSourceUnhealthy",
    "TradingErrorRateHigh",
    "TradingOrderRejectionRatioHigh",
    "TradingFillLatencyHigh",
    "TradingPredictionLatencyHigh",
    "TradingDrawdownBeyondLimit",
    "TradingKillSwitchActive",
    "TradingProducerDroppingEvents",
    "TickbusConsumerDisconnected",
    "TickbusEventsDeadLettered",
    "TickbusEventsDelayed",
    "TickbusSeriesOverflow",
}
CHECKPOINT_ALERTS = {"TickbusCheckpointFailing", "TickbusCannotCommit"}
RESTART_ALERTS = {"TickbusAggregatorDown", "TickbusQueueBacklog"}
# Needs five minutes of applied messages without a successful checkpoint; promtool tests prove it.
NOT_TRIPPED_LIVE = {"TickbusCheckpointStale"}


@dataclass
class Stack:
    """Prometheus scraping a working aggregator and one that cannot reach RabbitMQ; an emitter to the first."""

    prometheus: PrometheusServer
    aggregator: AggregatorProcess
    broken: AggregatorProcess
    names: Names
    state_dir: Path
    emitter: Emitter

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.aggregator.port}"

    @property
    def broken_instance(self) -> str:
        return f"127.0.0.1:{self.broken.port}"


def _aggregator_config(directory: Path) -> Path:
    """deploy/tickbus.toml with a short staleness window and a series limit the flood can reach."""
    text = AGGREGATOR_CONFIG.read_text(encoding="utf-8")
    for key, new in (
        ("heartbeat_staleness_seconds", STALENESS_SECONDS),
        ("max_series_per_metric", incidents.FLOOD_LIMIT),
    ):
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {new}", text)
        assert count == 1, f"deploy/tickbus.toml should set {key} once"
    path = directory / "tickbus.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _applied(samples: Samples) -> tuple[float, float]:
    """Events the aggregator applied and rejected, leaving out the emitter's own heartbeats."""
    received = total(samples, "tickbus_events_received_total")
    received -= total(samples, "tickbus_events_received_total", source=EMITTER_SOURCE)
    return received, total(samples, "tickbus_events_rejected_total")


def _drive(stack: Stack, phase: Phase) -> None:
    """Publish a phase, wait until the aggregator applied all of it and Prometheus scraped it afterwards."""
    received, rejected = _applied(stack.aggregator.scrape())
    for event in phase.events:
        assert stack.emitter.emit(event)
    assert stack.emitter.flush(30)
    publish_raw(stack.names.exchange, phase.raw)
    want = (received + phase.received, rejected + phase.rejected)

    def applied() -> bool:
        got = _applied(stack.aggregator.scrape())
        return got[0] >= want[0] and got[1] >= want[1]

    wait_for(applied, timeout=30, what=f"the aggregator to apply {want}")
    assert _applied(stack.aggregator.scrape()) == want
    stack.prometheus.wait_scraped_after(stack.instance, time.time())
    # Twice: the alerts read what the recording rules record in the same round.
    stack.prometheus.wait_evaluated_after(stack.prometheus.last_scrape(stack.instance) + EVALUATION_SECONDS)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, fed the baseline and then the incident phase of the scenario."""
    ensure_prometheus()
    workdir = tmp_path_factory.mktemp("stack")
    config = _aggregator_config(workdir)
    names = Names.unique("stack")
    state_dir = workdir / "state"
    secrets = make_web_secrets(workdir / "secrets")
    web = ["--web.config.file", str(secrets / WEB_CONFIG)]
    client = WebClient.for_secrets(secrets)
    aggregator = AggregatorProcess(names, workdir, config, ["--state-dir", str(state_dir), *web], web=client)
    unreachable = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    broken = AggregatorProcess(Names.unique("broken"), workdir, config, ["--amqp-url", unreachable, *web], web=client)
    prometheus_port = free_port()
    prometheus_config = write_test_setup(
        workdir / "prometheus",
        INTERVAL,
        {
            AGGREGATOR_JOB: [f"127.0.0.1:{aggregator.port}", f"127.0.0.1:{broken.port}"],
            SELF_JOB: [f"127.0.0.1:{prometheus_port}"],
        },
        secrets,
    )
    prometheus = PrometheusServer(prometheus_config, workdir, prometheus_port)
    emitter: Emitter | None = None
    try:
        aggregator.start()
        broken.start(wait_ready=False)
        prometheus.start()
        # Prometheus scrapes a new target a few seconds after it starts: wait for that, so the phases
        # below are each seen by the next scrape.
        prometheus.wait_scraped_after(f"127.0.0.1:{aggregator.port}", 0)
        emitter = Emitter(
            EmitterSettings(
                source=EMITTER_SOURCE, url=AMQP_URL, exchange=names.exchange, heartbeat_interval=0.5, version="1.0"
            )
        )
        built = Stack(prometheus, aggregator, broken, names, state_dir, emitter)
        _drive(built, incidents.baseline())
        _drive(built, incidents.incident())
        yield built
    finally:
        if emitter is not None:
            emitter.close(10)
        prometheus.stop()
        for process in (aggregator, broken):
            if process.process is not None:
                process.stop()
        incidents.delete_topology(names)


def _finite(samples: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in samples)


def _firing(stack: Stack) -> list[dict[str, str]]:
    """Labels of every alert firing now."""
    return [sample["metric"] for sample in stack.prometheus.query('ALERTS{alertstate="firing"}')]


def _ever_fired(stack: Stack, alertname: str) -> list[dict[str, str]]:
    """Labels of every `alertname` alert that fired in the last 15 minutes."""
    found = stack.prometheus.query(f'max_over_time(ALERTS{{alertname="{alertname}", alertstate="firing"}}[15m])')
    return [sample["metric"] for sample in found]


def _matches(alerts: list[dict[str, str]], alertname: str, labels: dict[str, str]) -> bool:
    return any(alert.get("alertname", alertname) == alertname and labels.items() <= alert.items() for alert in alerts)


def _rule(name: str) -> dict[str, Any]:
    return next(rule for rule in rules("alert") if rule["alert"] == name)


def _wait_alert(stack: Stack, name: str, labels: dict[str, str], timeout: float = 20.0) -> None:
    """Wait until the alert's expression, queried through the API, returns `labels`, and the alert fires."""
    expr = _rule(name)["expr"]
    last: list[dict[str, str]] = []

    def expression_matches() -> bool:
        nonlocal last
        last = [sample["metric"] for sample in stack.prometheus.query(expr)]
        return _matches(last, name, labels)

    try:
        wait_for(expression_matches, timeout, interval=0.2, what=f"{name}'s expression")
        wait_for(lambda: _matches(_ever_fired(stack, name), name, labels), timeout, what=f"{name} to fire")
    except AssertionError as error:
        targets = [(target["labels"]["instance"], target["health"]) for target in stack.prometheus.active_targets()]
        raise AssertionError(f"{error}\n{name} {labels}: expression gave {last}; targets {targets}") from None


def test_every_alert_is_tripped_by_one_of_these_tests() -> None:
    """The alerts are split between the scenarios below, and only the checkpoint-staleness one is left to promtool."""
    groups = [INCIDENT_ALERTS, CHECKPOINT_ALERTS, RESTART_ALERTS, NOT_TRIPPED_LIVE]
    assert sum(map(len, groups)) == len(set().union(*groups))
    assert set().union(*groups) == {rule["alert"] for rule in rules("alert")}


def test_prometheus_scrapes_both_aggregators_and_evaluates_every_shipped_rule(stack: Stack) -> None:
    """Targets are up (the aggregators over TLS with basic auth, as shipped), every shipped rule is loaded
    (alerts with for: 0s) and evaluates without error."""
    targets = stack.prometheus.active_targets()
    health = {(target["labels"]["job"], target["labels"]["instance"]): target["health"] for target in targets}
    assert health == {
        (AGGREGATOR_JOB, stack.instance): "up",
        (AGGREGATOR_JOB, stack.broken_instance): "up",
        (SELF_JOB, stack.prometheus.address): "up",
    }
    urls = {target["scrapeUrl"] for target in targets if target["labels"]["job"] == AGGREGATOR_JOB}
    assert urls == {f"https://{stack.instance}/metrics", f"https://{stack.broken_instance}/metrics"}
    loaded = stack.prometheus.loaded_rules()
    shipped = {rule.get("alert") or rule["record"] for rule in rules("alert") + rules("record")}
    assert {rule["name"] for rule in loaded} == shipped
    assert {rule["name"]: rule.get("lastError", "") for rule in loaded if rule["health"] != "ok"} == {}
    assert {rule["duration"] for rule in loaded if rule["type"] == "alerting"} == {0}


def test_prometheus_reads_each_aggregators_build_info(stack: Stack) -> None:
    """`tickbus_build_info` reaches Prometheus from each aggregator: 1, with this distribution's version, the
    revision and Python as labels (what a dashboard joins on to show which build runs where)."""
    import platform

    from aggregator.version import revision, version

    found = {
        sample["metric"]["instance"]: sample
        for sample in stack.prometheus.query(f'tickbus_build_info{{job="{AGGREGATOR_JOB}"}}')
    }
    assert set(found) == {stack.instance, stack.broken_instance}
    for sample in found.values():
        assert sample["metric"]["version"] == version()
        assert sample["metric"]["revision"] == revision()
        assert sample["metric"]["python"] == platform.python_version()
        assert float(sample["value"][1]) == 1.0


def test_the_scraped_exposition_passes_promtool_check_metrics(stack: Stack) -> None:
    """With every kind of series present, `promtool check metrics` finds nothing to lint in /metrics."""
    assert stack.aggregator.web is not None
    status, _, body = stack.aggregator.web.get(f"{stack.aggregator.url}/metrics", {"Accept": "text/plain"})
    assert status == 200
    assert b"trading_order_slippage_bps_bucket" in body
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_every_dashboard_query_and_variable_returns_data(stack: Stack) -> None:
    """Every panel query, with the variables set to All, parses and returns a finite value for the scenario."""
    problems: dict[str, str] = {}
    count = 0
    for name, dashboard in dashboards().items():
        values = variable_values(dashboard, RATE_INTERVAL)
        for title, ref, expr in panel_queries(dashboard):
            count += 1
            result = stack.prometheus.query(substitute(expr, values))
            if not _finite(result):
                problems[f"{name}: {title} ({ref})"] = f"{expr} -> {result}"
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, f"{name}: variable {variable['name']}"
            if not stack.prometheus.label_values(match[2], substitute(match[1], values)):
                problems[f"{name}: variable {variable['name']}"] = variable["definition"]
    assert not problems, "no data:\n" + "\n".join(f"{where}: {what}" for where, what in problems.items())
    assert count >= 80


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    """Each recording rule's expression returns finite data, and Prometheus has recorded its series; the rules
    that mark what several replicas hold twice return nothing over one aggregator (test_shard_prometheus.py has
    them return data over replicas a source moved between)."""
    problems = {}
    for rule in rules("record"):
        if rule["record"] in ONLY_WITH_SEVERAL_REPLICAS:
            if stack.prometheus.query(rule["expr"]) or stack.prometheus.query(rule["record"]):
                problems[rule["record"]] = "data with one aggregator"
            continue
        if not _finite(stack.prometheus.query(rule["expr"])):
            problems[rule["record"]] = "expression"
        if not stack.prometheus.query(rule["record"]):
            problems[rule["record"]] = "recorded series"
    assert problems == {}


def test_the_incidents_fire_their_alerts_and_the_look_alikes_do_not(stack: Stack) -> None:
    """Each incident of the scenario fires its alert with the right labels; the cases next to it stay quiet."""
    expected = {
        "TradingSourceSilent": [{"source": incidents.SILENT}],
        "TradingSourceUnhealthy": [{"source": incidents.SICK}],
        "TradingErrorRateHigh": [{"source": incidents.ERRORS, "component": "executor"}],
        "TradingOrderRejectionRatioHigh": [{"source": incidents.EXEC, "venue": "binance"}],
        "TradingFillLatencyHigh": [{"source": incidents.EXEC, "venue": "binance", "order_type": "market"}],
        "TradingPredictionLatencyHigh": [{"source": incidents.MODEL, "model": "ranker"}],
        "TradingDrawdownBeyondLimit": [{"account": "main"}, {"account": "tight"}],
        "TradingKillSwitchActive": [{"source": incidents.DESK, "reason": "manual"}],
        "TradingProducerDroppingEvents": [{"source": incidents.DROPPER}],
        "TickbusConsumerDisconnected": [{"instance": stack.broken_instance}],
        "TickbusEventsDeadLettered": [
            {"reason": "undeclared_metric", "kind": "metric", "source": incidents.BAD, "instance": stack.instance},
            {"reason": "malformed", "instance": stack.instance},
        ],
        "TickbusEventsDelayed": [{"instance": stack.instance}],
        "TickbusSeriesOverflow": [{"metric": "trading_signals_total", "instance": stack.instance}],
    }
    assert set(expected) == INCIDENT_ALERTS

    def all_firing() -> bool:
        firing = _firing(stack)
        return all(_matches(firing, name, labels) for name, wanted in expected.items() for labels in wanted)

    try:
        wait_for(all_firing, timeout=30, interval=0.5, what="the incident alerts")
    except AssertionError:
        firing = _firing(stack)
        missing = {name: labels for name, wanted in expected.items() for labels in wanted
                   if not _matches(firing, name, labels)}  # fmt: skip
        raise AssertionError(f"not firing: {missing}\nfiring: {firing}") from None
    firing = _firing(stack)
    # The alert expressions themselves, through the query API, return the incidents.
    for name, wanted in expected.items():
        result = [sample["metric"] for sample in stack.prometheus.query(_rule(name)["expr"])]
        for labels in wanted:
            assert _matches(result, name, labels), f"{name}: {labels} not in {result}"
    look_alikes = {
        # Over the default 10%, but under its own published 15% limit.
        "TradingDrawdownBeyondLimit": {"account": "hedge"},
        # Heartbeats every 0.5s.
        "TradingSourceSilent": {"source": EMITTER_SOURCE},
        # Warnings do not count as errors.
        "TradingErrorRateHigh": {"component": "feed"},
        # Resting limit orders may take their time.
        "TradingFillLatencyHigh": {"order_type": "limit"},
        "TickbusConsumerDisconnected": {"instance": stack.instance},
    }
    for name, labels in look_alikes.items():
        assert not _matches(firing, name, labels), f"{name} fires for {labels}"
    quiet = CHECKPOINT_ALERTS | RESTART_ALERTS | NOT_TRIPPED_LIVE
    assert {alert["alertname"] for alert in firing} & quiet == set()


def test_failing_checkpoints_fire_the_checkpoint_alert(stack: Stack) -> None:
    """State directory turned into a file: checkpoints fail, TickbusCannotCommit and TickbusCheckpointFailing fire;
    then they recover."""
    before = value(stack.aggregator.scrape(), "tickbus_checkpoint_failures_total") or 0.0
    aside = stack.state_dir.with_name("state-aside")
    stack.state_dir.rename(aside)
    stack.state_dir.write_text("not a directory\n")
    try:
        assert stack.emitter.emit(incidents.incident().events[0])
        assert stack.emitter.flush(30)

        def failed() -> bool:
            failures = value(stack.aggregator.scrape(), "tickbus_checkpoint_failures_total")
            return failures is not None and failures > before

        wait_for(failed, timeout=30, what="a failed checkpoint")
        wait_for(
            lambda: value(stack.aggregator.scrape(), "tickbus_checkpoint_failing") == 1,
            timeout=30,
            what="the aggregator to say it cannot commit",
        )
        stack.prometheus.wait_scraped_after(stack.instance, time.time())
        _wait_alert(stack, "TickbusCannotCommit", {"instance": stack.instance})
    finally:
        stack.state_dir.unlink()
        aside.rename(stack.state_dir)
    _wait_alert(stack, "TickbusCheckpointFailing", {"instance": stack.instance})
    # Checkpoints work again: a new one is written once more events arrive.
    last = value(stack.aggregator.scrape(), "tickbus_last_checkpoint_timestamp_seconds") or 0.0
    assert stack.emitter.emit(incidents.incident().events[0])
    assert stack.emitter.flush(30)
    wait_for(
        lambda: (value(stack.aggregator.scrape(), "tickbus_last_checkpoint_timestamp_seconds") or 0.0) > last,
        timeout=30,
        what="a successful checkpoint after the state directory came back",
    )


def test_a_restart_behind_a_backlog_fires_the_down_and_backlog_alerts(stack: Stack) -> None:
    """Aggregator stopped: TickbusAggregatorDown. Back behind 30,000 queued messages: TickbusQueueBacklog."""
    assert stack.aggregator.stop() == 0
    _wait_alert(stack, "TickbusAggregatorDown", {"instance": stack.instance})
    incidents.publish_backlog(stack.names.exchange, BACKLOG_MESSAGES)
    stack.aggregator.start()
    _wait_alert(stack, "TickbusQueueBacklog", {"instance": stack.instance})
    # The backlog drains and the aggregator is back up.
    wait_for(
        lambda: (
            total(stack.aggregator.scrape(), "tickbus_events_received_total", source=incidents.BACKLOG)
            >= BACKLOG_MESSAGES
        ),
        timeout=60,
        what="the backlog to drain",
    )
    wait_for(
        lambda: not _matches(_firing(stack), "TickbusAggregatorDown", {"instance": stack.instance}),
        timeout=20,
        what="TickbusAggregatorDown to resolve",
    )


def test_the_image_entry_command_with_compose_environment_is_healthy(tmp_path: Path) -> None:
    """`aggregator run` as the image runs it, with compose's environment and secrets (made by scripts/web-secrets,
    for loopback), passes the compose healthcheck over TLS and serves /metrics to Prometheus's credentials."""
    document = interpolate(compose_document(), {})
    service = document["services"]["aggregator"]
    final = final_stage(dockerfile_instructions())
    keyword_args = dict(final)
    command = exec_form(keyword_args["ENTRYPOINT"]) + exec_form(keyword_args["CMD"])
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert executable, f"{command[0]} is not installed next to {sys.executable}"
    names = Names.unique("image")
    port = free_port()
    secrets = make_web_secrets(tmp_path / "secrets")
    mounted = service_secrets(document, "aggregator")
    # Every secret the aggregator mounts is a file scripts/web-secrets writes into ./secrets, but the AMQP ones
    # (scripts/amqp-secrets': tests/integration/test_compose_broker.py runs them against a broker).
    assert {path.parent for path in mounted.values()} == {SECRETS_DIR}
    web_side = {path.name for path in mounted.values()} - amqp_secret_names()
    assert web_side <= {path.name for path in secrets.iterdir()}
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TICKBUS_")}
    environment |= dockerfile_env(final)
    environment |= {key: str(value) for key, value in service["environment"].items()}
    # What differs from the container: loopback broker and port, this repository's config, a temporary
    # volume, the secrets read where the script wrote them.
    assert environment["TICKBUS_AMQP_URL"] == "amqps://tickbus-aggregator@rabbitmq:5671/"
    assert environment["TICKBUS_WEB_CONFIG_FILE"] in mounted
    # The shared broker here: plain AMQP as guest, so not the compose broker's CA and password.
    del environment["TICKBUS_AMQP_CA_FILE"], environment["TICKBUS_AMQP_PASSWORD_FILE"]
    environment |= {
        "TICKBUS_AMQP_URL": AMQP_URL,
        "TICKBUS_CONFIG": str(host_path(service, environment["TICKBUS_CONFIG"])),
        "TICKBUS_HTTP_PORT": str(port),
        "TICKBUS_HTTP_HOST": "127.0.0.1",
        "TICKBUS_STATE_DIR": str(tmp_path / "state"),
        "TICKBUS_EXCHANGE": names.exchange,
        "TICKBUS_QUEUE": names.queue,
        "TICKBUS_WEB_CONFIG_FILE": str(secrets / mounted[environment["TICKBUS_WEB_CONFIG_FILE"]].name),
    }
    # The image's own HEALTHCHECK probes plain HTTP (an image run without a web config); compose's
    # replaces it, probing over TLS.
    check = [word.replace(SECRETS_MOUNT, f"{secrets}/") for word in service["healthcheck"]["test"][1:]]
    assert check != service["healthcheck"]["test"][1:], "the compose healthcheck reads the CA from the secrets"
    client = WebClient.for_secrets(secrets)
    metrics_url = f"https://127.0.0.1:{port}/metrics"

    def healthy() -> bool:
        argv = [sys.executable if check[0] == "python" else check[0], *check[1:]]
        return subprocess.run(argv, env=environment, capture_output=True, timeout=30, check=False).returncode == 0

    log_path = tmp_path / "image.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([executable, *command[1:]], env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(healthy, timeout=30, what="the compose healthcheck to pass")
        wait_for(
            lambda: (
                scrape(metrics_url, client.context(), client.headers()).get(("tickbus_consumer_connected", frozenset()))
                == 1
            ),
            timeout=30,
            what="the aggregator to consume",
        )
        # Without Prometheus's password, /metrics is refused.
        assert WebClient(client.ca_file).get(metrics_url)[0] == 401
        # The config came from TICKBUS_CONFIG: its custom kill switch metric is accepted.
        emit = subprocess.run(
            [executable, "emit", "metric", "name=kill_switch_active", "value=1", "labels.reason=drawdown",
             "--source", "image-test"],
            env=environment, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert emit.returncode == 0, emit.stderr
        wanted = ("trading_kill_switch_active", frozenset({("source", "image-test"), ("reason", "drawdown")}))
        wait_for(
            lambda: scrape(metrics_url, client.context(), client.headers()).get(wanted) == 1,
            timeout=30,
            what=str(wanted),
        )
        assert (tmp_path / "state").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        incidents.delete_topology(names)
    assert code == 0, log_path.read_text(errors="replace")
    # With the aggregator gone, the healthcheck fails.
    assert not healthy()


def test_prometheus_keeps_the_order_id_exemplar_of_a_slow_fill(stack: Stack) -> None:
    """A fill with an order id, scraped as OpenMetrics: Prometheus's exemplar API leads from the bucket to the order."""
    order_id = f"o-{int(time.time() * 1000)}"
    started = time.time()
    fill = Order(
        ts=time.time(), source=EMITTER_SOURCE, symbol="EXM", side="buy", status="filled", latency=4.2, order_id=order_id
    )
    assert stack.emitter.emit(fill)
    assert stack.emitter.flush(30)
    stack.prometheus.wait_scraped_after(stack.instance, time.time())

    def found() -> bool:
        data = stack.prometheus.api(
            "query_exemplars",
            query=f'trading_order_latency_seconds_bucket{{source="{EMITTER_SOURCE}"}}',
            start=str(started - 60),
            end=str(time.time() + 60),
        )
        ids = {exemplar["labels"].get("order_id") for series in data for exemplar in series["exemplars"]}
        buckets = {series["seriesLabels"]["le"] for series in data for exemplar in series["exemplars"]
                   if exemplar["labels"].get("order_id") == order_id}  # fmt: skip
        return order_id in ids and buckets == {"5.0"}

    wait_for(found, timeout=30, what="the order's exemplar in Prometheus")
