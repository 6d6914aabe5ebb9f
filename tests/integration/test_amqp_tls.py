"""The aggregator over amqps:// on a private mutual-TLS node with least-privilege users: `run`, `emit` and `dlq`
connect with a CA, a client certificate and a password file; an unknown CA, a wrong host name, a missing client
certificate and a wrong password are refused with a message that says what to do; no password ever shows."""

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trustme

from tests.support.process import AggregatorProcess
from tests.support.scrape import total, wait_for
from tests.support.secured import SecuredBroker

StartAggregator = Callable[..., AggregatorProcess]


def _aggregator_command(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aggregator", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _emit(
    broker: SecuredBroker, role: str, *words: str, args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    connection = args if args is not None else broker.amqp_args(role)
    return _aggregator_command("emit", *words, *connection, "--exchange", broker.names.exchange)


def _start(start_aggregator: StartAggregator, broker: SecuredBroker, **kwargs: object) -> AggregatorProcess:
    args = broker.amqp_args("aggregator")
    url = args[1]
    return start_aggregator(broker.names, extra_args=args[2:], amqp_url=url, **kwargs)


def _stranger_ca(directory: Path) -> Path:
    path = directory / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_run_emit_and_dlq_over_tls_with_password_files(
    secured_broker: SecuredBroker,
    start_aggregator: StartAggregator,
) -> None:
    """The aggregator consumes over amqps:// as its own user (password from a file, client certificate); a
    producer user's `aggregator emit` is applied; the operator's `aggregator dlq list` reads a dead letter; no
    password appears in any output, log, /metrics or /status.json."""
    broker = secured_broker
    aggregator = _start(start_aggregator, broker)
    sent = _emit(broker, "producer-a", "signal", "strategy=tls", "symbol=BTCUSDT", "side=buy", "--source", "tls-1")
    assert sent.returncode == 0, sent.stderr
    wait_for(
        lambda: total(aggregator.scrape(), "tickbus_events_received_total", kind="signal", source="tls-1") == 1,
        what="the signal sent over TLS",
    )
    bad = _emit(broker, "producer-a", "metric", "name=undeclared", "value=1", "--source", "tls-1")
    assert bad.returncode == 0, bad.stderr
    wait_for(lambda: total(aggregator.scrape(), "tickbus_events_rejected_total") == 1, what="the refusal")
    listing = _aggregator_command("dlq", "list", *broker.amqp_args("operator"), "--queue", broker.names.queue)
    assert listing.returncode == 0, listing.stderr
    assert "undeclared_metric" in listing.stdout
    metrics = aggregator.scrape()
    assert metrics
    with urllib.request.urlopen(f"{aggregator.url}/status.json", timeout=5) as response:
        status = response.read().decode()
    assert "tls-1" in status
    outputs = [sent.stdout, sent.stderr, bad.stdout, bad.stderr, listing.stdout, listing.stderr, aggregator.log()]
    text = "\n".join(outputs) + str(metrics) + status
    for role in ("aggregator", "producer-a", "operator"):
        assert broker.password(role) not in text, role
    assert broker.url("aggregator").split("@")[0] in aggregator.log()  # it does log where it connects


def test_an_unknown_ca_is_refused_with_what_to_do(secured_broker: SecuredBroker, tmp_path: Path) -> None:
    """A CA file that did not sign the broker's certificate: `emit` exits 1 naming amqp.ca_file and the fix."""
    stranger = _stranger_ca(tmp_path)
    refused = _emit(secured_broker, "producer-a", "heartbeat", args=secured_broker.amqp_args("producer-a", ca=stranger))
    assert refused.returncode == 1
    assert f"the broker's certificate is not signed by a CA in amqp.ca_file ({stranger})" in refused.stderr
    assert "set amqp.ca_file to the CA certificate that issued the broker's certificate" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_host_the_certificate_does_not_name_is_refused_naming_both(secured_broker: SecuredBroker) -> None:
    """The broker's certificate names localhost; reached as 127.0.0.1 it is refused, and the message names the
    certificate's name and the URL's host."""
    refused = _emit(
        secured_broker, "producer-a", "heartbeat", args=secured_broker.amqp_args("producer-a", host="127.0.0.1")
    )
    assert refused.returncode == 1
    assert "the broker's certificate is for 'localhost', not for '127.0.0.1' (the host in amqp.url)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_missing_client_certificate_and_a_wrong_password_say_so(
    secured_broker: SecuredBroker,
    tmp_path: Path,
) -> None:
    """The node requires a client certificate: without one `emit` says to set amqp.cert_file; with a wrong password
    file it names the user and the file, and never the password."""
    refused = _emit(
        secured_broker, "producer-a", "heartbeat", args=secured_broker.amqp_args("producer-a", certificate=False)
    )
    assert refused.returncode == 1
    # Which of the two the client sees is a race in TLS 1.3: the broker's alert, or the connection closed first.
    assert any(
        sign in refused.stderr
        for sign in (
            "the broker asks for a client certificate and none was given",
            "the broker closed the TLS connection",
        )
    ), refused.stderr
    assert "set amqp.cert_file and amqp.key_file" in refused.stderr

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-4711\n")
    args = secured_broker.amqp_args("producer-a")
    args[args.index("--amqp-password-file") + 1] = str(wrong)
    refused = _emit(secured_broker, "producer-a", "heartbeat", args=args)
    assert refused.returncode == 1
    assert f"RabbitMQ refused the login of user {secured_broker.user('producer-a')!r}" in refused.stderr
    assert f"password from amqp.password_file {wrong}" in refused.stderr
    assert "not-the-password-4711" not in refused.stderr + refused.stdout


def test_run_keeps_retrying_and_logs_the_tls_reason(
    secured_broker: SecuredBroker,
    start_aggregator: StartAggregator,
    tmp_path: Path,
) -> None:
    """`aggregator run` trusting another CA is not ready, and its log says why on each attempt, without a traceback
    or the password; given the right CA it consumes."""
    args = secured_broker.amqp_args("aggregator", ca=_stranger_ca(tmp_path))
    aggregator = start_aggregator(secured_broker.names, extra_args=args[2:], amqp_url=args[1], wait_ready=False)
    wait_for(lambda: aggregator.log().count("cannot reach RabbitMQ at") >= 2, timeout=20, what="two retry lines")
    log = aggregator.log()
    assert "the broker's certificate is not signed by a CA in amqp.ca_file" in log
    assert "Traceback" not in log
    assert secured_broker.password("aggregator") not in log
    assert not aggregator.ready()
    aggregator.stop()
    _start(start_aggregator, secured_broker)


def test_settings_mistakes_exit_2_naming_the_key(secured_broker: SecuredBroker, tmp_path: Path) -> None:
    """A password in the URL and a password file, TLS files with amqp://, TLS options in the URL, an unreadable
    CA file: each is a configuration error (exit 2) that names the setting and never prints the password."""
    password = secured_broker.password("producer-a")
    plain = secured_broker.url("producer-a", password=True)
    cases = {
        "the password is given twice": [
            "--amqp-url", plain, "--amqp-password-file", str(secured_broker.secured.password_file("producer-a")),
            "--amqp-ca-file", str(secured_broker.tls.ca),
        ],
        "ca_file is set but the url is amqp://": [
            "--amqp-url", plain.replace("amqps://", "amqp://"), "--amqp-ca-file", str(secured_broker.tls.ca),
        ],
        "set TLS with amqp.ca_file": ["--amqp-url", plain + "?no_verify_ssl=1"],
        "amqp.ca_file": ["--amqp-url", plain, "--amqp-ca-file", str(tmp_path / "absent.pem")],
    }  # fmt: skip
    for message, args in cases.items():
        result = _emit(secured_broker, "producer-a", "heartbeat", args=args)
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr, (message, result.stderr)
        assert password not in result.stderr + result.stdout
    started = time.monotonic()
    result = _aggregator_command("run", "--amqp-url", plain, "--amqp-ca-file", str(tmp_path / "absent.pem"))
    assert result.returncode == 2
    assert "ca_file" in result.stderr
    assert time.monotonic() - started < 30
