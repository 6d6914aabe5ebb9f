"""Connecting to RabbitMQ: TLS, the password file, several broker addresses, retries, and saying why not."""

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from aggregator.config import AmqpSettings, ConfigError

log = logging.getLogger(__name__)

CONNECT_ERRORS = (OSError, ConnectionError, aiormq.exceptions.AMQPConnectionError, asyncio.TimeoutError)
AMQPS_PORT = 5671
# OpenSSL's verify codes for a chain that ends at no CA the client trusts.
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_HOST_MISMATCH = {62, 64}


def describe(error: BaseException | None) -> str:
    """An exception as a log reason: its type and message (some AMQP errors carry no message)."""
    if error is None:
        return "no error"
    try:
        text = str(error)
    except Exception:  # some AMQP errors cannot describe themselves (a frame missing)
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def redacted(url: str) -> str:
    """The broker URL without its password, for logs."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


def _read_password(amqp: AmqpSettings) -> str:
    try:
        text = Path(amqp.password_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"amqp.password_file: cannot read {amqp.password_file}: {describe(error)}") from None
    # Secret files usually end with a newline that is not part of the password.
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"amqp.password_file: {amqp.password_file} is empty")
    return password


def connection_url(amqp: AmqpSettings, url: str | None = None) -> str:
    """The URL to connect with (amqp.url, or `url`: one of amqp.addresses), with amqp.password_file's password."""
    url = url or amqp.url
    if not amqp.password_file:
        return url
    return str(URL(url).with_password(_read_password(amqp)))


def where(amqp: AmqpSettings) -> str:
    """The broker's address or addresses for logs and messages, without passwords."""
    return ", ".join(redacted(url) for url in amqp.addresses)


def tls_context(amqp: AmqpSettings) -> ssl.SSLContext | None:
    """The TLS context of an amqps:// URL: the broker's certificate and host name verified, always; None for amqp://."""
    if not amqp.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=amqp.ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"amqp.ca_file: {amqp.ca_file} holds no usable CA certificate ({describe(error)})") from None
    if amqp.cert_file:
        try:
            context.load_cert_chain(amqp.cert_file, amqp.key_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"amqp.cert_file / amqp.key_file: cannot load the client certificate {amqp.cert_file} with the key "
                f"{amqp.key_file} ({describe(error)}): both PEM, the key unencrypted and matching the certificate"
            ) from None
    return context


def check(amqp: AmqpSettings) -> None:
    """Read the password file and the TLS files once, so that a mistake in them is a ConfigError up front."""
    connection_url(amqp)
    tls_context(amqp)


async def connect(amqp: AmqpSettings, name: str, timeout: float = 10.0) -> AbstractConnection:
    """One plain connection with the settings' TLS and credentials (for commands that connect once).

    To the first of amqp.addresses that answers; the last one's error if none does.
    """
    addresses = amqp.addresses
    for position, url in enumerate(addresses):
        try:
            return await aio_pika.connect(
                connection_url(amqp, url),
                ssl_context=tls_context(amqp),
                timeout=timeout,
                client_properties={"connection_name": name},
            )
        except CONNECT_ERRORS as error:
            if position == len(addresses) - 1:
                raise
            log.info("cannot reach RabbitMQ at %s (%s); trying %s", redacted(url), describe(error),
                     redacted(addresses[position + 1]))  # fmt: skip
    raise AssertionError("amqp.addresses is never empty")


class FailoverConnection(RobustConnection):
    """A robust connection over the nodes of one cluster: each failed attempt moves on to the next address.

    aio-pika's robust connection reconnects to the one URL it was made with. This one keeps the list: a lost
    connection is first taken up again at the node it was on; every attempt that fails moves to the next node in
    the list (round robin), `reconnect_interval` apart, so the survivors of a dead node are reached within one
    interval per dead node. The password file is read again at each attempt.
    """

    def __init__(self, url: URL, *, amqp: AmqpSettings, **kwargs: Any) -> None:
        self.amqp = amqp
        self.position = 0
        self.established = False
        super().__init__(URL(connection_url(amqp, amqp.addresses[0])), **kwargs)

    @property
    def address(self) -> str:
        """The URL of the node this connection is on, or tries next (without the password)."""
        return redacted(self.amqp.addresses[self.position])

    def advance(self) -> None:
        """Aim the next attempt at the next node."""
        addresses = self.amqp.addresses
        self.position = (self.position + 1) % len(addresses)
        self.url = URL(connection_url(self.amqp, addresses[self.position]))

    # aio-pika makes each attempt in this (name-mangled) method: wrapped, a failure moves on to the next node.
    async def _RobustConnection__connect_transport(self) -> None:
        try:
            await _CONNECT_TRANSPORT(self)
        except CONNECT_ERRORS as error:
            failed = self.address
            self.advance()
            if self.established and len(self.amqp.addresses) > 1:
                log.warning("cannot reach RabbitMQ at %s (%s); trying %s next", failed, describe(error), self.address)
            raise
        self.established = True


_CONNECT_TRANSPORT = RobustConnection._RobustConnection__connect_transport  # type: ignore[attr-defined]


async def connect_with_retry(
    amqp: AmqpSettings, on_retry: Callable[[], None] | None = None
) -> AbstractRobustConnection:
    """Connect robustly, retrying with capped exponential backoff while no broker answers or every one refuses.

    Each attempt tries the next of amqp.addresses. The password file and the TLS files are read again at each
    attempt, so a rotated secret is picked up.
    """
    delay = 0.5
    position = 0
    addresses = amqp.addresses
    while True:
        url = addresses[position]
        try:
            connection = FailoverConnection(
                URL(url),
                amqp=amqp,
                ssl_context=tls_context(amqp),
                reconnect_interval=1.0,
                client_properties={"connection_name": f"tickbus-aggregator {amqp.queue}"},
            )
            # Start from the node this attempt is for.
            connection.position = (position - 1) % len(addresses)
            connection.advance()
            await connection.connect(timeout=10)
            return connection
        except CONNECT_ERRORS as error:
            reason = await asyncio.to_thread(explain, error, amqp, url)
            position = (position + 1) % len(addresses)
            if position:
                log.error("cannot reach RabbitMQ at %s (%s); trying %s", redacted(url), reason,
                          redacted(addresses[position]))  # fmt: skip
                continue
            log.error("cannot reach RabbitMQ at %s (%s); retrying in %.1fs", redacted(url), reason, delay)
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)
            delay = min(delay * 2, amqp.reconnect_max_seconds)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what caused it, outermost first (the AMQP client wraps TLS errors)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def explain(error: BaseException, amqp: AmqpSettings, address: str | None = None) -> str:
    """Why a connection to `address` (default amqp.url) failed, in words that say what to do; never the password.

    May open one more TLS connection to read the names in the broker's certificate (a host name mismatch).
    """
    url = URL(address or amqp.url)
    host, port = url.host or "localhost", url.port or AMQPS_PORT
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _verification(cause, amqp, host, port)
        if isinstance(cause, ssl.SSLError):
            return _tls_refusal(cause, amqp, host, port)
        if isinstance(cause, (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError)):
            where = f" (password from amqp.password_file {amqp.password_file})" if amqp.password_file else ""
            return (
                f"RabbitMQ refused the login of user {url.user or 'guest'!r}{where}: a wrong password, an unknown "
                f"user or a user without access to the vhost ({describe(cause)})"
            )
        if isinstance(cause, ConnectionResetError) and amqp.tls and not amqp.cert_file:
            # With TLS 1.3 a broker that wants a client certificate may close the connection before its alert
            # reaches the client.
            return (
                f"{describe(cause)}: the broker closed the TLS connection; if it asks for a client certificate "
                "(ssl_options.fail_if_no_peer_cert), set amqp.cert_file and amqp.key_file"
            )
    return describe(error)


def _verification(error: ssl.SSLCertVerificationError, amqp: AmqpSettings, host: str, port: int) -> str:
    reason = error.verify_message or describe(error)
    if error.verify_code in _UNTRUSTED:
        trusted = f"a CA in amqp.ca_file ({amqp.ca_file})"
        if not amqp.ca_file:
            trusted = "a CA this system trusts (amqp.ca_file is unset)"
        return (
            f"TLS: the broker's certificate is not signed by {trusted} ({reason}): set amqp.ca_file to the CA "
            f"certificate that issued the broker's certificate"
        )
    if error.verify_code in _HOST_MISMATCH:
        names = certificate_names(amqp, host, port)
        held = ", ".join(repr(name) for name in names) if names else "names that could not be read"
        return (
            f"TLS: the broker's certificate is for {held}, not for {host!r} (the host in amqp.url): connect to one "
            f"of the names the certificate holds, or give the broker a certificate that names {host!r}"
        )
    if error.verify_code == 10:
        return f"TLS: the broker's certificate has expired ({reason}): renew it"
    return f"TLS: the broker's certificate was refused ({reason})"


def _tls_refusal(error: ssl.SSLError, amqp: AmqpSettings, host: str, port: int) -> str:
    reason = str(error.reason or describe(error))
    if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not amqp.cert_file):
        return (
            f"TLS: the broker asks for a client certificate and none was given ({reason}): set amqp.cert_file "
            "and amqp.key_file"
        )
    if any(word in reason for word in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR")):
        return (
            f"TLS: the broker refused the client certificate in amqp.cert_file ({amqp.cert_file}) ({reason}): "
            "it must be signed by a CA the broker trusts (its ssl_options.cacertfile)"
        )
    if "WRONG_VERSION_NUMBER" in reason or "UNEXPECTED_EOF" in reason:
        return (
            f"TLS: {host}:{port} does not answer TLS ({reason}): is it the broker's TLS port (5671 by default), "
            "not its plain AMQP port?"
        )
    return f"TLS: {describe(error)}"


def certificate_names(amqp: AmqpSettings, host: str, port: int, timeout: float = 5.0) -> list[str]:
    """The DNS names and addresses in the broker's certificate (its chain verified, its name not); [] if unknown."""
    try:
        context = tls_context(amqp)
    except ConfigError:
        return []
    if context is None:
        return []
    context.check_hostname = False
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            certificate: dict[str, Any] = dict(tls.getpeercert() or {})
    except (OSError, ssl.SSLError):
        return []
    names = [str(value) for kind, value in certificate.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    if not names:
        names = [str(value) for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names
