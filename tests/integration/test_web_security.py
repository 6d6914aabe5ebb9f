"""The scrape side with the real Prometheus: TLS and basic auth on /metrics as compose ships them, every other
scraper refused, secrets rotated without a restart of either side, and never a secret in a log or in /metrics.

The secrets are made by scripts/web-secrets (as for compose); Prometheus runs with deploy/prometheus's
`tickbus` job as shipped (its /run/secrets paths read from the test's directory), plus jobs that are
each one credential short. The aggregator runs through its CLI on the real RabbitMQ.
"""

import copy
import os
import signal
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.support.process import AggregatorProcess, Names, free_port
from tests.support.prometheus import (
    AGGREGATOR_JOB,
    PROMETHEUS_CONFIG,
    SELF_JOB,
    PrometheusServer,
    config_for_test,
    ensure_prometheus,
    load_yaml,
)
from tests.support.scrape import wait_for
from tests.support.web import (
    PROMETHEUS_PASSWORD,
    PROMETHEUS_USER,
    WEB_CA,
    WEB_CONFIG,
    WebClient,
    bcrypt_hash,
    make_web_secrets,
    write_web_config,
)

INTERVAL = "1s"
# Jobs like the shipped one, each missing one thing; Prometheus must be refused on every one.
REFUSED_JOBS = ("no-credentials", "wrong-password", "untrusted-ca", "plain-http")


@dataclass
class Secured:
    """An aggregator serving the web config scripts/web-secrets made, and Prometheus scraping it."""

    aggregator: AggregatorProcess
    prometheus: PrometheusServer
    secrets: Path

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.aggregator.port}"

    def targets(self) -> dict[str, dict[str, Any]]:
        """The aggregator's targets by job (each job scrapes it once)."""
        return {
            target["labels"]["job"]: target
            for target in self.prometheus.active_targets()
            if target["labels"]["job"] != SELF_JOB
        }

    def wait_scraped_after(self, moment: float, timeout: float = 20.0) -> None:
        """Wait for a successful scrape by the shipped job that started after `moment` (epoch seconds)."""

        def scraped() -> bool:
            up = self.prometheus.query(f'up{{job="{AGGREGATOR_JOB}"}}')
            stamp = self.prometheus.query(f'timestamp(up{{job="{AGGREGATOR_JOB}"}})')
            return bool(up and up[0]["value"][1] == "1" and float(stamp[0]["value"][1]) > moment)

        try:
            wait_for(scraped, timeout, interval=0.2, what="a successful scrape by the shipped job")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.targets()[AGGREGATOR_JOB]}") from None

    def secrets_in(self, text: str) -> list[str]:
        """Which of the current password and its hash (or a piece of it) appear in `text`."""
        password = (self.secrets / PROMETHEUS_PASSWORD).read_text()
        hashed = yaml.safe_load((self.secrets / WEB_CONFIG).read_text())["basic_auth_users"][PROMETHEUS_USER]
        return [secret for secret in (password, hashed, hashed[7:29]) if secret in text]


def _prometheus_config(directory: Path, secrets: Path, instance: str, self_address: str) -> Path:
    """The shipped config (secrets read from `secrets`, no rules) scraping `instance`, plus the refused jobs."""
    config = config_for_test(load_yaml(PROMETHEUS_CONFIG), INTERVAL, {AGGREGATOR_JOB: [instance],
                             SELF_JOB: [self_address]}, secrets)  # fmt: skip
    config["rule_files"] = []
    shipped = next(job for job in config["scrape_configs"] if job["job_name"] == AGGREGATOR_JOB)
    (directory / "wrong-password").write_text("not the password")
    other_ca = directory / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    variants: dict[str, Callable[[dict[str, Any]], None]] = {
        "no-credentials": lambda job: job.pop("basic_auth"),
        "wrong-password": lambda job: job["basic_auth"].update(password_file=str(directory / "wrong-password")),
        "untrusted-ca": lambda job: job["tls_config"].update(ca_file=str(other_ca)),
        "plain-http": lambda job: job.update(scheme="http"),
    }
    for name in REFUSED_JOBS:
        job = copy.deepcopy(shipped)
        job["job_name"] = name
        variants[name](job)
        config["scrape_configs"].append(job)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _aggregator_config(directory: Path, poll_seconds: float) -> Path:
    path = directory / "tickbus.toml"
    path.write_text(f"[http]\nweb_config_poll_seconds = {poll_seconds}\n", encoding="utf-8")
    return path


def _start(tmp_path: Path, names: Names, poll_seconds: float) -> tuple[AggregatorProcess, Path]:
    secrets = make_web_secrets(tmp_path / "secrets")
    args = ["--web.config.file", str(secrets / WEB_CONFIG), "--log-level", "debug"]
    config = _aggregator_config(tmp_path, poll_seconds)
    aggregator = AggregatorProcess(names, tmp_path, config, args, web=WebClient.for_secrets(secrets))
    return aggregator.start(), secrets


@pytest.fixture
def secured(tmp_path: Path, names: Names) -> Iterator[Secured]:
    """The aggregator (checking its web config files every 0.2 s) and Prometheus, both up, the first scrapes done."""
    ensure_prometheus()
    aggregator, secrets = _start(tmp_path, names, 0.2)
    prometheus_port = free_port()
    config = _prometheus_config(tmp_path, secrets, f"127.0.0.1:{aggregator.port}", f"127.0.0.1:{prometheus_port}")
    prometheus = PrometheusServer(config, tmp_path, prometheus_port)
    try:
        prometheus.start()
        built = Secured(aggregator, prometheus, secrets)
        wait_for(
            lambda: (
                all(
                    target["lastScrape"] > "2000" and target["health"] != "unknown"
                    for target in built.targets().values()
                )
                and len(built.targets()) == 1 + len(REFUSED_JOBS)
            ),
            timeout=30,
            what="a scrape by every job",
        )
        yield built
    finally:
        prometheus.stop()
        if aggregator.process is not None:
            aggregator.stop()


def test_prometheus_scrapes_over_tls_with_basic_auth_and_is_refused_without_them(secured: Secured) -> None:
    """The shipped job scrapes (https, the CA, the password file); without the password, with a wrong one, trusting
    another CA, or over plain HTTP, Prometheus gets nothing. Neither the password nor its hash is in the
    aggregator's debug log or in /metrics."""
    targets = secured.targets()
    assert targets[AGGREGATOR_JOB]["health"] == "up", targets[AGGREGATOR_JOB]["lastError"]
    assert targets[AGGREGATOR_JOB]["scrapeUrl"] == f"https://{secured.instance}/metrics"
    errors = {job: (targets[job]["health"], targets[job]["lastError"]) for job in REFUSED_JOBS}
    assert {job: health for job, (health, _) in errors.items()} == dict.fromkeys(REFUSED_JOBS, "down")
    assert "401 Unauthorized" in errors["no-credentials"][1]
    assert "401 Unauthorized" in errors["wrong-password"][1]
    assert "certificate signed by unknown authority" in errors["untrusted-ca"][1]
    assert errors["plain-http"][1]
    # What Prometheus stored came from the aggregator, through TLS and basic auth.
    connected = secured.prometheus.query(f'tickbus_consumer_connected{{job="{AGGREGATOR_JOB}"}}')
    assert [sample["value"][1] for sample in connected] == ["1"]
    assert secured.prometheus.query('up{job="no-credentials"}')[0]["value"][1] == "0"
    log = secured.aggregator.log()
    assert "refused GET /metrics from 127.0.0.1: wrong password" in log
    assert "refused GET /metrics from 127.0.0.1: no credentials" in log
    assert secured.secrets_in(log) == []
    assert secured.aggregator.web is not None
    status, _, body = secured.aggregator.web.get(f"{secured.aggregator.url}/metrics")
    assert status == 200
    assert secured.secrets_in(body.decode()) == []


def test_rotating_every_secret_takes_no_restart(secured: Secured) -> None:
    """scripts/web-secrets --force (new CA, certificate, key and password) while both run: the aggregator reloads
    its web config by itself, Prometheus reads the new CA and password, scrapes go on; the old ones are refused."""
    old = WebClient.for_secrets(secured.secrets)
    old_ca = secured.secrets.parent / "old-ca.pem"
    old_ca.write_bytes((secured.secrets / WEB_CA).read_bytes())
    pid = secured.aggregator.process.pid if secured.aggregator.process else None
    rotated = time.time()
    make_web_secrets(secured.secrets, "--force")
    new = WebClient.for_secrets(secured.secrets)
    assert new.password != old.password
    url = f"{secured.aggregator.url}/metrics"
    wait_for(lambda: new.get(url)[0] == 200, timeout=15, what="the aggregator to accept the new secrets")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        WebClient(old_ca, old.user, old.password).get(url)
    assert WebClient(new.ca_file, old.user, old.password).get(url)[0] == 401
    secured.wait_scraped_after(rotated + 1)
    assert secured.targets()[AGGREGATOR_JOB]["health"] == "up"
    assert secured.aggregator.process is not None
    assert secured.aggregator.process.pid == pid
    log = secured.aggregator.log()
    assert "web config reload: basic_auth_users: new password for prometheus" in log
    assert secured.secrets_in(log) == []


def test_sighup_reloads_the_web_config(tmp_path: Path, names: Names) -> None:
    """With polling off (web_config_poll_seconds = 0), a changed web config applies on SIGHUP, not before."""
    aggregator, secrets = _start(tmp_path, names, 0)
    try:
        url = f"{aggregator.url}/metrics"
        assert aggregator.web is not None
        document = yaml.safe_load((secrets / WEB_CONFIG).read_text())
        document["basic_auth_users"] = {"grafana": bcrypt_hash("a new password for grafana")}
        write_web_config(secrets / WEB_CONFIG, document)
        grafana = WebClient(aggregator.web.ca_file, "grafana", "a new password for grafana")
        time.sleep(1)
        assert grafana.get(url)[0] == 401
        assert aggregator.web.get(url)[0] == 200
        assert aggregator.process is not None
        os.kill(aggregator.process.pid, signal.SIGHUP)
        wait_for(lambda: grafana.get(url)[0] == 200, timeout=10, what="the SIGHUP reload")
        assert aggregator.web.get(url)[0] == 401
    finally:
        aggregator.stop()
