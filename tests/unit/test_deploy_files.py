"""The deployment files, checked without Docker: compose against its JSON schema, the Dockerfile, the
Prometheus config and rules with promtool (including unit tests of every alert), and the dashboards."""

import copy
import json
import re
import shutil
import stat
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import jsonschema
import pytest
import typer.main
import yaml
from cryptography import x509
from prometheus_client import CollectorRegistry, ProcessCollector

from aggregator.cli import app
from aggregator.config import load_settings
from aggregator.webconfig import load_web_config
from tests.support.composebroker import amqp_secret_names
from tests.support.deploy import (
    AGGREGATOR_CONFIG,
    COMPOSE_SCHEMA,
    DASHBOARD_PROVIDERS,
    DASHBOARDS_DIR,
    DATASOURCES,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    SECRETS_DIR,
    aggregator_families,
    bind_mounts,
    compose_document,
    compose_variables,
    dashboards,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    family_of,
    final_stage,
    host_path,
    interpolate,
    metric_names,
    named_volumes,
    panel_queries,
    panels,
    service_secrets,
    variable_references,
)
from tests.support.prometheus import (
    INSTALL_SCRIPT,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RULE_TESTS_DIR,
    RULES_DIR,
    config_for_test,
    ensure_prometheus,
    load_yaml,
    promtool,
    rule_files,
    rules,
    with_short_for,
)
from tests.support.web import PROMETHEUS_PASSWORD, WEB_CA, WEB_CONFIG, make_web_secrets

SERVICES = {"rabbitmq", "aggregator", "prometheus", "grafana"}
# What docs/deployment.md tells people to open: service -> container port.
PUBLISHED = {"rabbitmq": {5671, 15671}, "aggregator": {10464}, "prometheus": {9090}, "grafana": {3000}}
DASHBOARD_UIDS = {
    "tickbus-trading-overview",
    "tickbus-execution-quality",
    "tickbus-models",
    "tickbus-errors-sources",
    "tickbus-aggregator",
}


@pytest.fixture(scope="module")
def prometheus_version() -> str:
    """Prometheus and promtool installed by scripts/install-prometheus (once per session)."""
    return ensure_prometheus()


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _errors(document: Any) -> list[str]:
    return [f"{error.json_path}: {error.message}" for error in _validator().iter_errors(document)]


def _services() -> dict[str, Any]:
    services: dict[str, Any] = interpolate(compose_document(), {})["services"]
    return services


def _all_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every rule and every dashboard query (Grafana variables left in)."""
    found = [(f"rule {rule.get('alert') or rule['record']}", str(rule["expr"])) for rule in rules("alert")]
    found += [(f"rule {rule['record']}", str(rule["expr"])) for rule in rules("record")]
    for name, dashboard in dashboards().items():
        found += [(f"{name}: {title} {ref}", expr) for title, ref, expr in panel_queries(dashboard)]
        found += [(f"{name}: variable {var['name']}", var["definition"]) for var in dashboard["templating"]["list"]]
    return found


def test_install_script_is_idempotent_and_leaves_no_daemon(prometheus_version: str) -> None:
    """scripts/install-prometheus succeeds again when installed, and no packaged daemon is left on :9090."""
    assert prometheus_version.startswith("prometheus, version 2.")
    again = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert shutil.which("prometheus")
    assert shutil.which("promtool")
    daemon = subprocess.run(["pgrep", "-u", "prometheus", "-x", "prometheus"], capture_output=True, check=False)
    assert daemon.returncode != 0, f"a packaged prometheus daemon is running: pid {daemon.stdout!r}"


def test_compose_validates_against_the_compose_spec() -> None:
    """compose.yaml is valid per the Compose Specification schema, as written and once interpolated."""
    document = compose_document()
    assert _errors(document) == []
    assert _errors(interpolate(document, {})) == []
    overridden = interpolate(document, {"TICKBUS_BIND_ADDRESS": "0.0.0.0", "GRAFANA_PORT": "3300"})
    assert _errors(overridden) == []
    assert "0.0.0.0:3300:3000" in overridden["services"]["grafana"]["ports"]
    # The validator is not a rubber stamp: a misspelt key is caught.
    broken = copy.deepcopy(document)
    broken["services"]["aggregator"]["healtcheck"] = broken["services"]["aggregator"].pop("healthcheck")
    assert any("healtcheck" in error for error in _errors(broken))


def test_every_compose_variable_has_a_default() -> None:
    """`docker compose up` works without an .env file: every ${VAR} has a default (and no RabbitMQ credential
    is a variable any more: they are secrets made by scripts/make-deploy-secrets)."""
    variables = compose_variables(compose_document())
    assert "RABBITMQ_PORT" in variables
    assert {"RABBITMQ_USER", "RABBITMQ_PASSWORD"} & set(variables) == set()
    assert {name for name, default in variables.items() if default is None} == set()


def test_compose_runs_the_four_services_on_pinned_images(prometheus_version: str) -> None:
    """RabbitMQ with management, the aggregator, Prometheus (the tested version) and Grafana, ports on loopback."""
    services = _services()
    assert set(services) == SERVICES
    for name, service in services.items():
        image = service["image"]
        assert ":" in image, f"{name}: image {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: pin the image version"
        published = {int(port.split(":")[-1]) for port in service["ports"]}
        assert published == PUBLISHED[name], name
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), f"{name}: publish on loopback"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "management" in services["rabbitmq"]["image"]
    # The Prometheus image is the version the rules and dashboards are tested against.
    tested = re.search(r"version (\d+\.\d+\.\d+)", prometheus_version)
    assert tested is not None
    assert services["prometheus"]["image"] == f"prom/prometheus:v{tested[1]}"
    assert services["aggregator"]["build"]["dockerfile"] == DOCKERFILE.name
    for name, service in services.items():
        for container_path, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {container_path}) does not exist"
    declared_volumes = set(compose_document()["volumes"])
    for service in services.values():
        assert set(named_volumes(service).values()) <= declared_volumes


def test_compose_configures_the_aggregator_through_its_cli_environment() -> None:
    """Every TICKBUS_* variable is one `aggregator run` reads, and each points at what compose provides."""
    services = _services()
    aggregator = services["aggregator"]
    environment = aggregator["environment"]
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    readable = {param.envvar for param in command.commands["run"].params}
    assert set(environment) - readable == set(), "compose sets variables `aggregator run` does not read"
    assert {"TICKBUS_AMQP_URL", "TICKBUS_CONFIG", "TICKBUS_HTTP_PORT", "TICKBUS_STATE_DIR"} <= set(environment)
    assert host_path(aggregator, environment["TICKBUS_CONFIG"]) == AGGREGATOR_CONFIG
    assert named_volumes(aggregator).get(environment["TICKBUS_STATE_DIR"]) == "aggregator-state"
    port = int(environment["TICKBUS_HTTP_PORT"])
    assert {int(mapping.split(":")[-1]) for mapping in aggregator["ports"]} == {port}
    # Over TLS to the broker's name, as the aggregator's own user whose password, like the CA, is a mounted secret.
    assert environment["TICKBUS_AMQP_URL"] == "amqps://tickbus-aggregator@rabbitmq:5671/"
    assert environment["TICKBUS_AMQP_CA_FILE"] == "/run/secrets/amqp-ca.crt"
    assert environment["TICKBUS_AMQP_PASSWORD_FILE"] == "/run/secrets/amqp-aggregator-password"
    assert {"amqp-ca.crt", "amqp-aggregator-password"} <= set(aggregator["secrets"])
    assert "environment" not in services["rabbitmq"], "the broker's users come from its definitions, not variables"
    assert aggregator["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    # Healthy means ready (consuming, queue bound), so `depends_on: service_healthy` gates publishers on it.
    assert "/readyz" in " ".join(aggregator["healthcheck"]["test"])
    # Prometheus scrapes the aggregator service on that port.
    scrape = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert scrape["tickbus"]["static_configs"][0]["targets"] == [f"aggregator:{port}"]


def test_dockerfile_runs_the_aggregator_as_a_non_root_user_with_a_healthcheck() -> None:
    """Final stage: non-root USER, the compose healthcheck, `aggregator run`, a state volume, the wheel's sources."""
    instructions = dockerfile_instructions()
    final = final_stage(instructions)
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0")
    keyword_args = dict(final)
    entry = exec_form(keyword_args["ENTRYPOINT"]) + exec_form(keyword_args["CMD"])
    assert entry == ["aggregator", "run"]
    health_options, _, health_command = keyword_args["HEALTHCHECK"].partition(" CMD ")
    assert "--interval=" in health_options
    # The image checks liveness over plain HTTP (the image without a web config; an orchestrator replacing
    # unhealthy containers must not kill an aggregator waiting for its broker); compose checks readiness over
    # TLS (test_compose_serves_metrics_over_tls_with_basic_auth_from_secrets).
    compose_health = " ".join(_services()["aggregator"]["healthcheck"]["test"])
    image_health = " ".join(exec_form(health_command))
    assert "/healthz" in image_health
    assert "/readyz" in compose_health
    assert "https://" in compose_health
    for probe in (image_health, compose_health):
        assert "os.environ.get('TICKBUS_HTTP_PORT', '10464')" in probe
    env = dockerfile_env(final)
    assert json.loads(keyword_args["VOLUME"]) == [env["TICKBUS_STATE_DIR"]]
    assert env["TICKBUS_STATE_DIR"] == _services()["aggregator"]["environment"]["TICKBUS_STATE_DIR"]
    assert all(not arguments.endswith(":latest") for keyword, arguments in instructions if keyword == "FROM")
    # The build stage copies everything the wheel is built from, and .dockerignore lets it through.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {
        "pyproject.toml",
        "setup.py",
        pyproject["project"]["readme"],
        *pyproject["project"]["license-files"],
        *{package.split(".")[0] for package in pyproject["tool"]["setuptools"]["packages"]},
    }
    copied = set()
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from"):
            copied.update(arguments.split()[:-1])
    assert needed <= copied, f"the build stage does not copy {needed - copied}"
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")}
    assert needed & ignored == set()


def test_the_default_port_is_the_same_everywhere() -> None:
    """The config default, the CLI's help, the image, compose, Prometheus's scrape target and the README agree."""
    port = load_settings().http.port
    final = final_stage(dockerfile_instructions())
    assert dict(final)["EXPOSE"] == str(port)
    assert dockerfile_env(final)["TICKBUS_HTTP_PORT"] == str(port)
    aggregator = _services()["aggregator"]
    assert aggregator["environment"]["TICKBUS_HTTP_PORT"] == str(port)
    assert aggregator["ports"] == [f"127.0.0.1:{port}:{port}"]
    scrape = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert scrape["tickbus"]["static_configs"][0]["targets"] == [f"aggregator:{port}"]
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    port_option = next(param for param in command.commands["run"].params if param.name == "port")
    assert f"default {port}" in str(getattr(port_option, "help", ""))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"localhost:{port}/metrics" in readme
    assert f"port = {port}" in readme
    # Not the OpenTelemetry Prometheus exporter's 9464, nor in the range Prometheus allocates to exporters.
    assert port != 9464
    assert not 9090 <= port <= 9999


def test_the_image_reports_the_revision_it_was_built_from() -> None:
    """The TICKBUS_REVISION build argument reaches the final stage's environment; compose passes it."""
    final = final_stage(dockerfile_instructions())
    assert ("ARG", "TICKBUS_REVISION=unknown") in final
    assert dockerfile_env(final)["TICKBUS_REVISION"] == "${TICKBUS_REVISION}"
    assert _services()["aggregator"]["build"]["args"]["TICKBUS_REVISION"] == "unknown"


def test_compose_serves_metrics_over_tls_with_basic_auth_from_secrets(tmp_path: Path) -> None:
    """The aggregator reads its web config from a compose secret, listens on all interfaces of its container
    only, and Prometheus scrapes it with https, the CA and the password from secrets that scripts/web-secrets
    makes: a certificate for the `aggregator` host name and a bcrypt hash of exactly that password."""
    document = interpolate(compose_document(), {})
    services = document["services"]
    environment = services["aggregator"]["environment"]
    assert environment["TICKBUS_HTTP_HOST"] == "0.0.0.0"
    assert all(port.startswith("${TICKBUS_BIND_ADDRESS:-127.0.0.1}:") for port in
               compose_document()["services"]["aggregator"]["ports"])  # fmt: skip
    aggregator_secrets = service_secrets(document, "aggregator")
    prometheus_secrets = service_secrets(document, "prometheus")
    assert {path.parent for path in (aggregator_secrets | prometheus_secrets).values()} == {SECRETS_DIR}
    web_config_path = environment["TICKBUS_WEB_CONFIG_FILE"]
    assert aggregator_secrets[web_config_path].name == WEB_CONFIG
    # The certificate and key the web config names sit next to it, in the same mount.
    secrets = make_web_secrets(tmp_path / "secrets")
    # The AMQP ones (the broker's CA, the aggregator's password) are scripts/amqp-secrets': test_deploy_rabbitmq.
    web_side = {path.name for path in (aggregator_secrets | prometheus_secrets).values()} - amqp_secret_names()
    assert web_side <= {path.name for path in secrets.iterdir()}
    config = load_web_config(secrets / WEB_CONFIG)
    assert config.tls is not None
    for path in config.tls.files:
        assert f"/run/secrets/{path.name}" in aggregator_secrets, f"{path.name} is not mounted next to the web config"
    # The private key is readable by the container's user (10001), protected by the directory instead.
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.tls.key_file.stat().st_mode) == 0o644
    assert (secrets / ".gitignore").read_text() == "*\n"
    certificate = x509.load_pem_x509_certificate(config.tls.cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "aggregator" in names.get_values_for_type(x509.DNSName)
    job = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}["tickbus"]
    assert job["scheme"] == "https"
    assert prometheus_secrets[job["tls_config"]["ca_file"]].name == WEB_CA
    assert prometheus_secrets[job["basic_auth"]["password_file"]].name == PROMETHEUS_PASSWORD
    password = (secrets / PROMETHEUS_PASSWORD).read_bytes()
    assert len(password) >= 24
    assert bcrypt.checkpw(password, config.users[job["basic_auth"]["username"]])
    assert "password" not in job["basic_auth"], "the password comes from a file, never from prometheus.yml"
    # Run again: nothing is renewed; with --force, everything is.
    make_web_secrets(secrets)
    assert (secrets / PROMETHEUS_PASSWORD).read_bytes() == password
    make_web_secrets(secrets, "--force")
    assert (secrets / PROMETHEUS_PASSWORD).read_bytes() != password


def test_prometheus_config_and_rules_pass_promtool_check(prometheus_version: str) -> None:
    """`promtool check config` (which also loads the rule files) and `promtool check rules` succeed."""
    checked = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rule_files())} rule files found" in checked.stdout
    files = [str(path) for path in rule_files()]
    assert {Path(path).name for path in files} == {"recording.yml", "alerts.yml"}
    checked = promtool("check", "rules", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_cover_every_alert_with_its_real_durations(prometheus_version: str) -> None:
    """`promtool test rules` passes; every alert is expected to fire somewhere; tests load the shipped rule files."""
    test_files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    result = promtool("test", "rules", *map(str, test_files))
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = {path.resolve() for path in rule_files()}
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in test_files:
        document = load_yaml(path)
        assert {(path.parent / name).resolve() for name in document["rule_files"]} <= shipped
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules("alert")}
    assert alerts - fired == set(), "alerts no unit test expects to fire"
    assert alerts - quiet == set(), "alerts no unit test expects to stay quiet"
    recorded = {rule["record"] for rule in rules("record")}
    tested_records = set()
    for path in test_files:
        for case in load_yaml(path)["tests"]:
            for check in case.get("promql_expr_test", []):
                tested_records |= metric_names(check["expr"]) & recorded
    assert {
        "source_venue:trading_order_rejections:ratio_rate5m",
        "source_venue:trading_order_slippage_bps:mean_rate5m",
        "source_model:trading_prediction_accuracy:ratio_rate1h",
        "source_strategy:trading_trades_win:ratio_rate1h",
    } <= tested_records


def _break_alert(alert: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Copies of the rules with `alert` made unable to fire, and of the unit tests naming it; their promtool run."""
    (directory / "rules").mkdir(parents=True)
    (directory / "tests").mkdir()
    for path in RULES_DIR.glob("*.yml"):
        document = load_yaml(path)
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alert:
                    rule["expr"] = "vector(1) > 2"
        (directory / "rules" / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    tests = [path for path in RULE_TESTS_DIR.glob("*.yml") if f"alertname: {alert}\n" in path.read_text()]
    assert tests, f"no unit test names {alert}"
    for path in tests:
        shutil.copy(path, directory / "tests" / path.name)
    return promtool("test", "rules", *sorted(str(path) for path in (directory / "tests").glob("*.yml")))


def test_promtool_unit_tests_fail_when_any_alert_is_broken(tmp_path: Path, prometheus_version: str) -> None:
    """Mutation check: an alert that can never fire makes `promtool test rules` fail, naming that alert."""
    alerts = [rule["alert"] for rule in rules("alert")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(alerts, pool.map(lambda alert: _break_alert(alert, tmp_path / alert), alerts), strict=True))
    for alert, result in results.items():
        assert result.returncode != 0, f"{alert}: the unit tests pass even when it never fires"
        assert f"alertname: {alert}," in result.stdout + result.stderr


def test_alerts_are_labelled_annotated_and_linked_to_a_dashboard() -> None:
    """Every alert has a `for`, a severity, a summary, a description and the uid of an existing dashboard."""
    alerts = rules("alert")
    assert len(alerts) >= 10
    uids = {dashboard["uid"] for dashboard in dashboards().values()}
    for alert in alerts:
        name = alert["alert"]
        assert "for" in alert, name
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
        assert alert["annotations"]["dashboard"] in uids, name
    names = {alert["alert"] for alert in alerts}
    # What the desk asked for, one alert (at least) each.
    for wanted in (
        "TradingSourceSilent",
        "TradingErrorRateHigh",
        "TradingOrderRejectionRatioHigh",
        "TradingFillLatencyHigh",
        "TradingPredictionLatencyHigh",
        "TradingDrawdownBeyondLimit",
        "TradingKillSwitchActive",
        "TickbusEventsDeadLettered",
        "TickbusCheckpointFailing",
        "TickbusCannotCommit",
        "TickbusQueueBacklog",
    ):
        assert wanted in names


def test_every_metric_the_rules_and_dashboards_read_exists() -> None:
    """Each name read is served by the aggregator with deploy/tickbus.toml, recorded by a rule, or Prometheus's own."""
    families, histograms = aggregator_families()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    process = {sample.name for metric in registry.collect() for sample in metric.samples}
    recorded = {rule["record"] for rule in rules("record")}
    known = families | recorded | process | {"up", "ALERTS"}
    unknown = {}
    for where, expr in _all_exprs():
        names = metric_names(expr)
        assert names, f"{where}: reads no metric"
        missing = {name for name in names if family_of(name, histograms) not in known}
        if missing:
            unknown[where] = missing
    assert unknown == {}
    # The checker itself: a typo is caught.
    assert family_of("trading_order_latency_second_bucket", histograms) not in known


def test_aggregator_config_declares_the_custom_metrics_the_rules_use() -> None:
    """deploy/tickbus.toml loads, declares kill_switch_active{reason} and every custom metric the files read."""
    settings = load_settings(AGGREGATOR_CONFIG)
    declared = {metric.name: metric for metric in settings.metrics}
    assert declared["kill_switch_active"].type == "gauge"
    assert declared["kill_switch_active"].labels == ["reason"]
    namespace = settings.catalog.namespace
    used = {name for _, expr in _all_exprs() for name in metric_names(expr)}
    for name in declared:
        assert f"{namespace}_{name}" in used, f"custom metric {name} is declared but nothing reads it"


def test_dashboards_are_well_formed() -> None:
    """Five dashboards, unique uids and panel ids, the provisioned datasource, a tidy grid, defined variables."""
    boards = dashboards()
    assert {board["uid"] for board in boards.values()} == DASHBOARD_UIDS
    assert len(boards) == len(DASHBOARD_UIDS)
    datasource_uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    for name, board in boards.items():
        assert board["title"], name
        assert board["schemaVersion"] >= 36, name
        variables = {variable["name"]: variable for variable in board["templating"]["list"]}
        for variable in variables.values():
            assert variable["datasource"]["uid"] == datasource_uid, f"{name}: variable {variable['name']}"
            assert variable["allValue"] == ".*"
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        cells: dict[tuple[int, int], str] = {}
        for panel in panels(board):
            grid = panel["gridPos"]
            assert grid["w"] > 0, f"{name}: {panel['title']}"
            assert 0 <= grid["x"] <= grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["title"], name
            assert panel["datasource"]["uid"] == datasource_uid, f"{name}: {panel['title']}"
            targets = panel["targets"]
            assert targets, f"{name}: {panel['title']} has no query"
            assert len({target["refId"] for target in targets}) == len(targets)
            for target in targets:
                assert target["datasource"]["uid"] == datasource_uid
                assert target["expr"].strip()
                assert variable_references(target["expr"]) <= set(variables) | {"__rate_interval"}, panel["title"]


def test_dashboards_cover_what_the_desk_asked_for() -> None:
    """Each dashboard reads the metrics of its topic (by the names its queries read)."""
    read = {
        board["uid"]: {name for _, _, expr in panel_queries(board) for name in metric_names(expr)}
        for board in dashboards().values()
    }
    wanted = {
        "tickbus-trading-overview": {
            "trading_signals_total",
            "trading_orders_total",
            "trading_order_filled_notional_total",
            "trading_portfolio_daily_pnl",
            "trading_position_unrealized_pnl",
        },
        "tickbus-execution-quality": {
            "trading_order_latency_seconds_bucket",
            "trading_order_slippage_bps_sum",
            "source_venue:trading_order_rejections:ratio_rate5m",
        },
        "tickbus-models": {
            "trading_predictions_total",
            "trading_prediction_probability_ratio_bucket",
            "trading_prediction_expected_profit_ratio_bucket",
            "trading_prediction_latency_seconds_bucket",
        },
        "tickbus-errors-sources": {"trading_errors_total", "trading_source_up", "trading_source_healthy"},
        "tickbus-aggregator": {
            "tickbus_events_received_total",
            "tickbus_events_rejected_total",
            "tickbus_event_age_seconds_bucket",
            "tickbus_queue_messages",
            "tickbus_series",
            "tickbus_checkpoint_seconds_bucket",
            "tickbus_last_checkpoint_timestamp_seconds",
            "tickbus_checkpoint_failures_total",
        },
    }
    for uid, names in wanted.items():
        assert names - read[uid] == set(), uid


def test_grafana_provisioning_matches_compose() -> None:
    """The datasource points at the compose Prometheus; the dashboards folder and home dashboard are mounted."""
    grafana = _services()["grafana"]
    datasource = load_yaml(DATASOURCES)["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARDS_DIR
    assert host_path(grafana, "/etc/grafana/provisioning") == DATASOURCES.parent.parent
    home = host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.exists()
    assert json.loads(home.read_text())["uid"] == "tickbus-trading-overview"


def test_compose_prometheus_loads_the_shipped_config() -> None:
    """The Prometheus service reads deploy/prometheus/prometheus.yml, whose rule globs find both rule files."""
    prometheus = _services()["prometheus"]
    flags = dict(flag.split("=", 1) for flag in prometheus["command"] if "=" in flag)
    assert host_path(prometheus, flags["--config.file"]) == PROMETHEUS_CONFIG
    assert host_path(prometheus, "/etc/prometheus/rules/alerts.yml") == PROMETHEUS_DIR / "rules" / "alerts.yml"
    assert flags["--storage.tsdb.path"] in named_volumes(prometheus)


def test_the_live_test_copy_only_changes_intervals_targets_and_for() -> None:
    """The copies the stack test runs differ from the shipped files in intervals, targets and `for` alone."""
    shipped = load_yaml(PROMETHEUS_CONFIG)
    copied = config_for_test(shipped, "1s", {"tickbus": ["127.0.0.1:1"], "prometheus": ["127.0.0.1:2"]})
    assert copied["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert copied["rule_files"] == shipped["rule_files"]
    restored = copy.deepcopy(copied)
    restored["global"] = shipped["global"]
    for job, original in zip(restored["scrape_configs"], shipped["scrape_configs"], strict=True):
        job["static_configs"][0]["targets"] = original["static_configs"][0]["targets"]
    assert restored == shipped
    for path in rule_files():
        document = load_yaml(path)
        short = with_short_for(document)
        for group, short_group in zip(document["groups"], short["groups"], strict=True):
            for rule, short_rule in zip(group["rules"], short_group["rules"], strict=True):
                assert {**rule, "for": None} == {**short_rule, "for": None}
                if "alert" in rule:
                    assert short_rule["for"] == "0s"


def test_the_image_builds_and_checks_the_compiled_apply_loop() -> None:
    """The build stage installs a C compiler; the final stage fails its build if a compiled module is missing."""
    instructions = dockerfile_instructions()
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any("gcc" in run and "apt-get install" in run for run in runs[: len(runs) // 2 + 1])
    final = [arguments for keyword, arguments in final_stage(instructions) if keyword == "RUN"]
    assert any('import aggregator._fastapply, aggregator._fastrender, aggregator._totals"' in run for run in final)
