"""Every producer over amqps:// to a private mutual-TLS node as a least-privilege user with a password file: the
Python, Node and Go producers deliver (and set user_id, which an aggregator authenticating sources requires); the
shell producer delivers but cannot set user_id; an unknown CA and a host the certificate does not name are refused
by each with a message that says what to do."""

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from producers import Emitter, EmitterSettings
from schemas import Heartbeat
from tests.support.driver import ROOT
from tests.support.process import AggregatorProcess
from tests.support.scrape import total, value, wait_for
from tests.support.secured import SecuredBroker

StartAggregator = Callable[..., AggregatorProcess]
NODE = ROOT / "producers" / "node"
GO = ROOT / "producers" / "go"
SHELL = ROOT / "producers" / "shell" / "tickbus-emit.sh"
PRODUCER = "producer-a"


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Node's dependencies, amqp-tools and Go (the scripts are no-ops once done); the Go commands built offline."""
    for script in ("install-node-deps", "install-amqp-tools", "install-go"):
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, result.stderr
    out = tmp_path_factory.mktemp("go-bin")
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    built = subprocess.run(
        ["go", "build", "-o", f"{out}/", "./cmd/..."], cwd=GO, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture
def aggregator(secured_broker: SecuredBroker, start_aggregator: StartAggregator, tmp_path: Path) -> AggregatorProcess:
    """An aggregator over TLS that accepts from the producer user only the sources py-*, node-*, go-* and sh-*."""
    config = tmp_path / "tickbus.toml"
    config.write_text(
        f'[source_auth]\nenabled = true\n[source_auth.users]\n"{secured_broker.user(PRODUCER)}" = '
        '["py-*", "node-*", "go-*", "sh-*"]\n'
    )
    args = secured_broker.amqp_args("aggregator")
    return start_aggregator(secured_broker.names, config=config, extra_args=args[2:], amqp_url=args[1])


def _files(broker: SecuredBroker, ca: Path | None = None) -> dict[str, str]:
    return {
        "ca": str(ca or broker.tls.ca),
        "cert": str(broker.tls.client_certificate),
        "key": str(broker.tls.client_key),
        "password": str(broker.secured.password_file(PRODUCER)),
    }


def _python(broker: SecuredBroker, source: str, host: str = "localhost", ca: Path | None = None) -> Emitter:
    files = _files(broker, ca)
    return Emitter(
        EmitterSettings(
            source=source, url=broker.url(PRODUCER, host=host), exchange=broker.names.exchange, ca_file=files["ca"],
            cert_file=files["cert"], key_file=files["key"], password_file=files["password"], heartbeat_interval=0,
        )
    )  # fmt: skip


def _heartbeat(source: str) -> dict[str, Any]:
    return {"kind": "heartbeat", "ts": time.time(), "source": source}


def _node(broker: SecuredBroker, source: str, host: str = "localhost", ca: Path | None = None, timeout_ms: int = 20000
          ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    files = _files(broker, ca)
    command = [
        "node", str(NODE / "bin" / "tickbus-emit.js"), "--source", source, "--exchange", broker.names.exchange,
        "--url", broker.url(PRODUCER, host=host), "--ca-file", files["ca"], "--cert-file", files["cert"],
        "--key-file", files["key"], "--password-file", files["password"], "--heartbeat-ms", "0",
        "--timeout-ms", str(timeout_ms),
    ]  # fmt: skip
    return subprocess.run(
        command, input=json.dumps(_heartbeat(source)), capture_output=True, text=True, timeout=60, check=False
    )


def _go(tools: Path, broker: SecuredBroker, source: str, host: str = "localhost", ca: Path | None = None,
        timeout: str = "20s") -> subprocess.CompletedProcess[str]:  # fmt: skip
    files = _files(broker, ca)
    command = [
        str(tools / "tickbus-emit"), "-source", source, "-exchange", broker.names.exchange,
        "-url", broker.url(PRODUCER, host=host), "-ca-file", files["ca"], "-cert-file", files["cert"],
        "-key-file", files["key"], "-password-file", files["password"], "-heartbeat", "0", "-timeout", timeout,
    ]  # fmt: skip
    return subprocess.run(
        command, input=json.dumps(_heartbeat(source)), capture_output=True, text=True, timeout=60, check=False
    )


def _shell(broker: SecuredBroker, source: str, host: str = "localhost", ca: Path | None = None
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    files = _files(broker, ca)
    env = {key: item for key, item in os.environ.items() if not key.startswith("TICKBUS_")}
    env |= {
        "TICKBUS_AMQP_URL": broker.url(PRODUCER, host=host),
        "TICKBUS_AMQP_CA_FILE": files["ca"],
        "TICKBUS_AMQP_CERT_FILE": files["cert"],
        "TICKBUS_AMQP_KEY_FILE": files["key"],
        "TICKBUS_AMQP_PASSWORD_FILE": files["password"],
        "TICKBUS_EXCHANGE": broker.names.exchange,
    }
    return subprocess.run(
        ["bash", str(SHELL), "--source", source, "heartbeat"], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


@pytest.fixture
def stranger_ca(tmp_path: Path) -> Path:
    path = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_every_producer_delivers_over_tls_as_a_least_privilege_user(
    secured_broker: SecuredBroker, aggregator: AggregatorProcess, tools: Path
) -> None:
    """Python, Node and Go heartbeats are applied under authenticated sources (they set user_id); the shell
    producer's arrives (TLS, client certificate, password file) and is refused as it carries no user_id."""
    emitter = _python(secured_broker, "py-1")
    assert emitter.emit(Heartbeat(ts=time.time(), source="py-1"))
    assert emitter.flush(20), emitter.publisher.last_error
    emitter.close()
    node = _node(secured_broker, "node-1")
    assert node.returncode == 0, node.stderr
    go = _go(tools, secured_broker, "go-1")
    assert go.returncode == 0, go.stderr
    shell = _shell(secured_broker, "sh-1")
    assert shell.returncode == 0, shell.stderr

    def arrived() -> bool:
        samples = aggregator.scrape()
        return total(samples, "tickbus_events_received_total") == 3 and (
            total(samples, "tickbus_events_rejected_total") == 1
        )

    wait_for(arrived, what="three heartbeats applied and the shell's refused")
    samples = aggregator.scrape()
    for source in ("py-1", "node-1", "go-1"):
        assert value(samples, "tickbus_events_received_total", kind="heartbeat", source=source) == 1, source
    assert value(samples, "tickbus_events_rejected_total", reason="source_not_allowed", kind="heartbeat",
                 source="sh-1") == 1  # fmt: skip
    password = secured_broker.password(PRODUCER)
    for result in (node, go, shell):
        assert password not in result.stdout + result.stderr


def test_every_producer_refuses_an_unknown_ca_saying_what_to_do(
    secured_broker: SecuredBroker, stranger_ca: Path, tools: Path
) -> None:
    """Trusting another CA, each producer fails to deliver and says the broker's certificate is not signed by a CA
    in its CA file, and to set that option."""
    emitter = _python(secured_broker, "py-2", ca=stranger_ca)
    assert emitter.emit(Heartbeat(ts=time.time(), source="py-2"))
    assert not emitter.flush(2)
    assert f"the broker's certificate is not signed by a CA in ca_file ({stranger_ca})" in (
        emitter.publisher.last_error
    )
    emitter.close(0.5)
    node = _node(secured_broker, "node-2", ca=stranger_ca, timeout_ms=2000)
    assert node.returncode == 1
    assert f"the broker's certificate is not signed by a CA in caFile ({stranger_ca})" in node.stderr
    go = _go(tools, secured_broker, "go-2", ca=stranger_ca, timeout="2s")
    assert go.returncode == 1
    assert f"the broker's certificate is not signed by a CA in CAFile ({stranger_ca})" in go.stderr
    shell = _shell(secured_broker, "sh-2", ca=stranger_ca)
    assert shell.returncode == 1
    assert f"the broker's certificate is not signed by a CA in {stranger_ca}" in shell.stderr
    assert "set --ca-file to the CA certificate that issued it" in shell.stderr


def test_every_producer_refuses_a_host_the_certificate_does_not_name(
    secured_broker: SecuredBroker, tools: Path
) -> None:
    """Reaching the broker (whose certificate names localhost only) as 127.0.0.1, each producer fails and names
    the certificate's name and the URL's host (amqp-publish, which checks host names only, says to use one)."""
    emitter = _python(secured_broker, "py-3", host="127.0.0.1")
    assert emitter.emit(Heartbeat(ts=time.time(), source="py-3"))
    assert not emitter.flush(2)
    assert "the broker's certificate is for 'localhost', not for '127.0.0.1'" in emitter.publisher.last_error
    emitter.close(0.5)
    node = _node(secured_broker, "node-3", host="127.0.0.1", timeout_ms=2000)
    assert node.returncode == 1
    assert "the broker's certificate is for 'localhost', not for '127.0.0.1'" in node.stderr
    go = _go(tools, secured_broker, "go-3", host="127.0.0.1", timeout="2s")
    assert go.returncode == 1
    assert "the broker's certificate is for 'localhost', not for '127.0.0.1'" in go.stderr
    shell = _shell(secured_broker, "sh-3", host="127.0.0.1")
    assert shell.returncode == 1
    assert "the broker's certificate is for localhost, not for '127.0.0.1'" in shell.stderr
