"""The real Prometheus for tests: installed from Debian's package, run on a free loopback port, queried over HTTP."""

import copy
import functools
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.support.process import free_port
from tests.support.scrape import wait_for

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-prometheus"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
AGGREGATOR_JOB = "tickbus"
SELF_JOB = "prometheus"


class PrometheusError(AssertionError):
    """Prometheus refused a query (a parse or evaluation error) or answered with an error status."""


@functools.cache
def ensure_prometheus() -> str:
    """Run scripts/install-prometheus once per test session; the installed server's version line."""
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"scripts/install-prometheus failed:\n{result.stdout}\n{result.stderr}"
    for tool in ("prometheus", "promtool"):
        assert shutil.which(tool), f"{tool} is not on PATH after scripts/install-prometheus"
    version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, check=True, timeout=30)
    return version.stdout.splitlines()[0]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the result is returned whatever its exit code."""
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rule_files() -> list[Path]:
    """The rule files the shipped config loads (its `rule_files` globs, relative to the config)."""
    config = load_yaml(PROMETHEUS_CONFIG)
    found: list[Path] = []
    for pattern in config["rule_files"]:
        found += sorted(PROMETHEUS_DIR.glob(pattern))
    return found


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of `kind` ("alert" or "record") in the shipped rule files, each with its group name added."""
    found = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if kind in rule:
                    found.append({**rule, "group": group["name"]})
    return found


def with_short_for(rules_document: dict[str, Any], duration: str = "0s") -> dict[str, Any]:
    """A copy of a rule file whose alerts wait `duration` instead of their `for` (for the live test only)."""
    document = copy.deepcopy(rules_document)
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = duration
    return document


# Where compose mounts the secrets the shipped config reads (the CA of the aggregator, the password).
SECRETS_MOUNT = "/run/secrets/"


def config_for_test(
    config: dict[str, Any], interval: str, targets: dict[str, list[str]], secrets: Path | None = None
) -> dict[str, Any]:
    """A copy of the shipped config that scrapes and evaluates every `interval` and scrapes `targets` (by job).

    With `secrets`, files under /run/secrets/ are read from that directory instead (scripts/web-secrets
    output). Everything else (rule files, jobs, TLS and auth, paths, relabelling) is kept as shipped.
    """
    if secrets is not None:
        config = yaml.safe_load(yaml.safe_dump(config).replace(SECRETS_MOUNT, f"{secrets}/"))
    document = copy.deepcopy(config)
    document["global"]["scrape_interval"] = interval
    document["global"]["evaluation_interval"] = interval
    document["global"]["scrape_timeout"] = interval
    for scrape_config in document["scrape_configs"]:
        job = scrape_config["job_name"]
        if job in targets:
            static = scrape_config["static_configs"]
            assert len(static) == 1, f"job {job}: expected one static_configs entry"
            static[0]["targets"] = targets[job]
    return document


def write_test_setup(
    directory: Path, interval: str, targets: dict[str, list[str]], secrets: Path | None = None
) -> Path:
    """The shipped config and rules rewritten for a test (`config_for_test`, `with_short_for`) in `directory`."""
    config = config_for_test(load_yaml(PROMETHEUS_CONFIG), interval, targets, secrets)
    directory.mkdir(parents=True, exist_ok=True)
    for path in rule_files():
        target = directory / path.relative_to(PROMETHEUS_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(with_short_for(load_yaml(path)), sort_keys=False), encoding="utf-8")
    config_path = directory / PROMETHEUS_CONFIG.name
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path


def _get_json(url: str, timeout: float = 10.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        raise PrometheusError(f"{url}: HTTP {error.code}: {body}") from None


@dataclass
class PrometheusServer:
    """`prometheus` on 127.0.0.1 with its own storage directory, started from `config`."""

    config: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"prometheus-{self.port}.log"

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        storage = self.workdir / "tsdb"
        storage.mkdir(parents=True, exist_ok=True)
        command = [
            "prometheus",
            f"--config.file={self.config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={self.address}",
            "--log.level=warn",
            # As compose runs it: exemplars scraped from OpenMetrics are kept and queryable.
            "--enable-feature=exemplar-storage",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(ready, timeout, what="prometheus to be ready")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, PrometheusError otherwise."""
        query = urllib.parse.urlencode(params, doseq=True)
        answer = _get_json(f"{self.url}/api/v1/{path}?{query}")
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate an instant query; the result as a list of samples (a scalar becomes one sample)."""
        params: dict[str, str | list[str]] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": [match]})
        return values

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def loaded_rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def last_scrape(self, instance: str) -> float:
        """When the newest successful scrape of `instance` started, or 0."""
        # timestamp() gives a sample's own time only when applied to a selector (else the evaluation time).
        up = self.query(f'up{{instance="{instance}"}}')
        if not up or up[0]["value"][1] != "1":
            return 0.0
        samples = self.query(f'timestamp(up{{instance="{instance}"}})')
        return float(samples[0]["value"][1]) if samples else 0.0

    def rules_evaluated_at(self) -> float:
        """When the least recently evaluated rule group was last evaluated (epoch seconds), or 0."""
        moments = []
        for group in self.api("rules")["groups"]:
            stamp = re.sub(r"(\.\d{6})\d+", r"\1", group["lastEvaluation"]).replace("Z", "+00:00")
            moments.append(datetime.fromisoformat(stamp).timestamp())
        return min(moments, default=0.0)

    def wait_evaluated_after(self, moment: float, timeout: float = 20.0) -> None:
        """Wait until every rule group has been evaluated after `moment`."""
        wait_for(lambda: self.rules_evaluated_at() > moment, timeout, interval=0.2, what="the rules to be evaluated")

    def wait_scraped_after(self, instance: str, moment: float, timeout: float = 20.0) -> None:
        """Wait for a successful scrape of `instance` that started after `moment` (epoch seconds)."""
        wait_for(
            lambda: self.last_scrape(instance) > moment,
            timeout,
            interval=0.2,
            what=f"a scrape of {instance} after {time.strftime('%H:%M:%S', time.localtime(moment))}",
        )
