"""Connection settings and refusals without a broker: the password file, TLS settings checked with the key named,
refusals worded with what to do (never the password), and dead letters the broker refuses for a full queue."""

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiormq
import pytest
from pamqp import commands as spec

from aggregator.amqp.connection import check, connection_url, explain, redacted, tls_context
from aggregator.amqp.deadletter import DeadLetterPublisher
from aggregator.config import AmqpSettings, ConfigError, load_settings
from aggregator.refusal import Refusal
from producers.connection import check_settings, explain_tls
from producers.emitter import EmitterSettings
from schemas.wire import HEADER_DETAIL, Reason
from tests.support.rabbitnodes import make_tls_files


def _verification(code: int, message: str) -> BaseException:
    """An AMQP connection error caused by a certificate verification error, as aiormq raises it."""
    cause = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    cause.verify_code = code
    cause.verify_message = message
    error = aiormq.exceptions.AMQPConnectionError(str(cause))
    error.__cause__ = cause
    return error


def _ssl_error(reason: str) -> BaseException:
    cause = ssl.SSLError(1, f"[SSL: {reason}] ({reason.lower()})")
    cause.reason = reason
    error = aiormq.exceptions.AMQPConnectionError(str(cause))
    error.__cause__ = cause
    return error


def test_the_password_comes_from_its_file_without_its_newline(tmp_path: Path) -> None:
    """password_file fills the URL's password (URL-quoted, newline stripped); logs see the URL redacted."""
    secret = tmp_path / "password"
    secret.write_text("p@ss:w/rd\n")
    amqp = AmqpSettings(url="amqps://tickbus-aggregator@rabbitmq:5671/desk", password_file=str(secret))
    url = connection_url(amqp)
    assert url == "amqps://tickbus-aggregator:p%40ss%3Aw%2Frd@rabbitmq:5671/desk"
    assert "p@ss" not in redacted(url)
    assert "***" in redacted(url)
    secret.write_text("\n")
    with pytest.raises(ConfigError, match=r"amqp.password_file: .* is empty"):
        check(amqp)


def test_tls_settings_are_checked_with_the_key_named(tmp_path: Path) -> None:
    """A CA file that holds no certificate and a key that does not match the certificate are ConfigErrors naming
    the keys; good files make a context that verifies the broker and its name."""
    files = make_tls_files(tmp_path / "tls")
    good = AmqpSettings(url="amqps://u@localhost/", ca_file=str(files.ca), cert_file=str(files.client_certificate),
                        key_file=str(files.client_key))  # fmt: skip
    context = tls_context(good)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert tls_context(AmqpSettings()) is None
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"amqp\.ca_file"):
        tls_context(AmqpSettings(url="amqps://u@localhost/", ca_file=str(not_a_ca)))
    other = make_tls_files(tmp_path / "other")
    mismatched = AmqpSettings(url="amqps://u@localhost/", cert_file=str(files.client_certificate),
                              key_file=str(other.client_key))  # fmt: skip
    with pytest.raises(ConfigError, match=r"amqp\.cert_file / amqp\.key_file"):
        tls_context(mismatched)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"amqp.url": "amqp://u@h/", "amqp.ca_file": "/etc/hostname"}, "amqp.ca_file is set but the url is amqp://"),
        ({"amqp.url": "amqps://u@h/", "amqp.cert_file": "/etc/hostname"}, "go together"),
        ({"amqp.url": "amqps://u:secret@h/", "amqp.password_file": "/etc/hostname"}, "the password is given twice"),
        ({"amqp.url": "amqps://h/", "amqp.password_file": "/etc/hostname"}, "needs a user in amqp.url"),
        ({"amqp.url": "amqps://u:secret@h/?no_verify_ssl=1"}, "not in the URL (no_verify_ssl=)"),
        ({"amqp.url": "amqps://u@h/", "amqp.key_file": "/nonexistent", "amqp.cert_file": "/etc/hostname"},
         "amqp.key_file: /nonexistent does not exist"),
        ({"amqp.url": "http://u:secret@h/"}, "got 'http://'"),
    ],
)  # fmt: skip
def test_connection_settings_that_cannot_work_are_refused_without_the_password(
    overrides: dict[str, Any], message: str
) -> None:
    """Each mistake is a ConfigError saying what is wrong; a password in the URL never shows in it."""
    with pytest.raises(ConfigError) as error:
        load_settings(None, overrides)
    assert message in str(error.value)
    assert "secret" not in str(error.value)


def test_refusals_say_what_to_do() -> None:
    """Unknown CA, host mismatch (with the names the certificate holds, read by a second connection that fails here),
    a missing client certificate, a refused one, a plain port, a refused login: each in words with the fix."""
    amqp = AmqpSettings(url="amqps://alice@broker.example:5671/", ca_file="", password_file="")
    untrusted = explain(_verification(20, "unable to get local issuer certificate"), amqp)
    assert "not signed by a CA this system trusts (amqp.ca_file is unset)" in untrusted
    assert "set amqp.ca_file" in untrusted
    mismatch = explain(_verification(62, "Hostname mismatch"), AmqpSettings(url="amqps://u@127.0.0.1:1/"))
    assert "not for '127.0.0.1' (the host in amqp.url)" in mismatch
    assert "names that could not be read" in mismatch
    assert "set amqp.cert_file and amqp.key_file" in explain(_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), amqp)
    refused = explain(_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), amqp)
    assert "the broker refused the client certificate" in refused
    assert "does not answer TLS" in explain(_ssl_error("WRONG_VERSION_NUMBER"), amqp)
    login = aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused")
    assert "RabbitMQ refused the login of user 'alice'" in explain(login, amqp)
    reset = aiormq.exceptions.AMQPConnectionError("reset")
    reset.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert "set amqp.cert_file and amqp.key_file" in explain(reset, amqp)
    assert explain(ConnectionRefusedError(111, "Connection refused"), amqp) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_the_producers_check_and_explain_the_same_way(tmp_path: Path) -> None:
    """EmitterSettings refuses what cannot work, naming the setting; its TLS refusals say what to do."""
    for kwargs, message in (
        ({"url": "amqp://u@h/", "ca_file": "ca.pem"}, "need an amqps:// url"),
        ({"url": "amqps://u:pw@h/", "password_file": "pw"}, "the password is given twice"),
        ({"url": "amqps://u@h/", "cert_file": "c.pem"}, "go together"),
        ({"url": "amqps://u:pw@h/?cafile=x"}, "not in the URL (cafile=)"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            EmitterSettings(source="s", **kwargs)  # type: ignore[arg-type]
    check_settings("amqps://u@h/", "ca.pem", "", "", "pw")
    explained = explain_tls(_verification(19, "self-signed certificate in certificate chain"), "amqps://u@h/",
                            "/x/ca.pem", "")  # fmt: skip
    assert explained == (
        "tls-untrusted",
        "TLS: the broker's certificate is not signed by a CA in ca_file (/x/ca.pem) (self-signed certificate in "
        "certificate chain): set ca_file to the CA certificate that issued it",
    )
    host = explain_tls(_verification(64, "IP address mismatch"), "amqps://u@10.0.0.1/", "", "", ["broker"])
    assert host is not None
    assert "is for 'broker', not for '10.0.0.1'" in host[1]
    assert explain_tls(ConnectionRefusedError(), "amqps://u@h/", "", "") is None


class _Exchange:
    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.outcomes = outcomes
        self.published = 0

    async def publish(self, message: Any, routing_key: str) -> None:
        self.published += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


class _Channel:
    is_closed = False

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    async def get_exchange(self, name: str, ensure: bool = False) -> _Exchange:
        return self.exchange


class _Message:
    body = b"{bad"
    content_type = "application/json"
    routing_key = "signal"
    message_id = "m-1"
    app_id = None
    timestamp = None
    headers = None  # the dead letter copies x-tickbus-source from here


def test_a_dead_letter_the_full_queue_refuses_is_counted_and_nothing_stalls(caplog: pytest.LogCaptureFixture) -> None:
    """A nack (the dead-letter queue full, overflow reject-publish) is counted and logged once, not retried, and
    delivered() is True, so the ledger acks; any other failure is still retried and holds the acks back."""
    nack = aiormq.exceptions.DeliveryError(None, spec.Basic.Nack(delivery_tag=1))
    exchange = _Exchange([None, nack, nack, OSError("gone"), None])
    dropped: list[str] = []

    async def open_channel() -> Any:
        return _Channel(exchange)

    async def scenario() -> tuple[bool, bool]:
        letters = DeadLetterPublisher(open_channel, "x.dead", dropped.append)
        for reason in (Reason.MALFORMED, Reason.TOO_LARGE, Reason.MALFORMED):
            letters.publish(_Message(), Refusal(reason, "why"))  # type: ignore[arg-type]
        first = await letters.delivered()
        letters.publish(_Message(), Refusal(Reason.MALFORMED, "why"))  # type: ignore[arg-type]
        second = await letters.delivered()
        return first, second

    with caplog.at_level(logging.WARNING, logger="aggregator.amqp.deadletter"):
        first, second = asyncio.run(scenario())
    assert first is True
    assert dropped == ["too_large", "malformed"]
    assert exchange.published == 5  # the two nacked letters were not published again; the failed one was
    assert second is True
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "the dead-letter queue is full" in warnings[0]
    assert "tickbus_dead_letters_dropped_total" in warnings[0]


def test_letters_published_while_the_channel_opens_share_it_and_keep_their_order() -> None:
    """Refusals made before the dead-letter channel is open wait for that one channel and are published in the
    order they were made, so `dlq list` shows them oldest first and no channel is opened twice."""
    exchange = _RecordingExchange()
    opened: list[_Channel] = []

    async def open_channel() -> Any:
        await asyncio.sleep(0.05 if not opened else 0)  # the first opening is the slow one
        channel = _Channel(exchange)  # type: ignore[arg-type]
        opened.append(channel)
        return channel

    assert _publish_letters(open_channel, 5) is True
    assert len(opened) == 1
    assert exchange.details == [f"letter {index}" for index in range(5)]


def _publish_letters(open_channel: Callable[[], Awaitable[Any]], count: int) -> bool:
    """Refuse `count` messages ("letter 0", "letter 1", ...) at once; whether delivered() saw every letter out."""

    async def scenario() -> bool:
        letters = DeadLetterPublisher(open_channel, "x.dead")
        for index in range(count):
            letters.publish(_Message(), Refusal(Reason.MALFORMED, f"letter {index}"))  # type: ignore[arg-type]
        return await letters.delivered()

    return asyncio.run(scenario())


class _RecordingExchange:
    def __init__(self) -> None:
        self.details: list[str] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        self.details.append(message.headers[HEADER_DETAIL])


def test_letters_waiting_for_a_channel_that_cannot_open_fail_with_it_instead_of_each_trying() -> None:
    """When opening the dead-letter channel fails, the letters that waited for that opening fail at once (and
    nothing is acked): one attempt per round of delivered(), not one slow attempt per letter."""
    attempts: list[float] = []

    async def open_channel() -> Any:
        attempts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)
        raise OSError("connection reset")

    assert _publish_letters(open_channel, 20) is False
    assert len(attempts) == 2  # the first round's and the retry's
