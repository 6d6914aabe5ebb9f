"""A producer's connection settings made real: the password file, the TLS context, and refusals put in words."""

import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from yarl import URL

# TLS settings the AMQP client would read from the URL's query; tickbus producers take them from their own
# settings only, so that certificate verification cannot be turned off by a URL.
URL_TLS_OPTIONS = frozenset({"cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl"})
_UNTRUSTED = {2, 18, 19, 20, 21, 27}

_HOST_MISMATCH = {62, 64}


class SettingsError(ValueError):
    """The password file or a TLS file cannot be used; the message names the setting and the file."""


def check_settings(url: str, ca_file: str, cert_file: str, key_file: str, password_file: str) -> None:
    """Raise ValueError naming the setting when these connection settings cannot work (never quoting the URL)."""
    if not url.startswith(("amqp://", "amqps://")):
        raise ValueError("url must start with amqp:// or amqps://")
    parts = urlsplit(url)
    given = sorted(URL_TLS_OPTIONS.intersection(name for name, _ in parse_qsl(parts.query)))
    if given:
        raise ValueError(f"url: set TLS with ca_file, cert_file and key_file, not in the URL ({given[0]}=)")
    if (ca_file or cert_file or key_file) and parts.scheme != "amqps":
        raise ValueError(
            "ca_file, cert_file and key_file need an amqps:// url (the broker's TLS port, 5671 by default)"
        )
    if bool(cert_file) != bool(key_file):
        raise ValueError("cert_file and key_file go together (the client certificate and its private key)")
    if password_file and parts.password is not None:
        raise ValueError("the password is given twice: in the url and in password_file; keep one")
    if password_file and not parts.username:
        raise ValueError("password_file needs a user in the url (amqps://USER@host:5671/)")


def connection_url(url: str, password_file: str) -> str:
    """`url`, with the password read from `password_file` (when set; a trailing newline is not part of it)."""
    if not password_file:
        return url
    try:
        password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"password_file: cannot read {password_file}: {error}") from None
    if not password:
        raise SettingsError(f"password_file: {password_file} is empty")
    return str(URL(url).with_password(password))


def user_of(url: str) -> str:
    """The user the connection logs in as: the URL's, or the AMQP client's default (guest)."""
    return URL(url).user or "guest"


def tls_context(url: str, ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """The TLS context of an amqps:// URL, verifying the broker's certificate and name; None for amqp://."""
    if not url.startswith("amqps://"):
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise SettingsError(f"ca_file: {ca_file} holds no usable CA certificate ({error})") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise SettingsError(
                f"cert_file / key_file: cannot load {cert_file} with the key {key_file} ({error}): both PEM, the key "
                "unencrypted and matching the certificate"
            ) from None
    return context


def explain_tls(
    error: BaseException, url: str, ca_file: str, cert_file: str, held: list[str] | None = None
) -> tuple[str, str] | None:
    """(kind, what a TLS failure anywhere in `error`'s causes means and what to do); None if it is not one.

    For a host name mismatch, `held` is what the broker's certificate names (`certificate_names`, when the
    caller can afford a second connection to read them).
    """
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not other for other in seen):
        seen.append(current)
        if isinstance(current, ssl.SSLCertVerificationError):
            host = URL(url).host or ""
            if current.verify_code in _UNTRUSTED:
                where = f"a CA in ca_file ({ca_file})" if ca_file else "a CA this system trusts (ca_file is unset)"
                return "tls-untrusted", (
                    f"TLS: the broker's certificate is not signed by {where} ({current.verify_message}): set "
                    "ca_file to the CA certificate that issued it"
                )
            if current.verify_code in _HOST_MISMATCH:
                names = ", ".join(repr(name) for name in held) if held else "names not read"
                return "tls-host", (
                    f"TLS: the broker's certificate is for {names}, not for {host!r} (the host in the url): "
                    f"connect by a name the certificate holds, or give the broker a certificate that names {host!r}"
                )
            return "tls", f"TLS: the broker's certificate was refused ({current.verify_message})"
        if isinstance(current, ssl.SSLError):
            reason = str(current.reason or current)
            if "CERTIFICATE_REQUIRED" in reason:
                return (
                    "tls-client",
                    f"TLS: the broker asks for a client certificate ({reason}): set cert_file and key_file",
                )
            if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
                return "tls-client", (
                    f"TLS: the broker refused the client certificate in cert_file ({cert_file}) ({reason}): it must "
                    "be signed by a CA the broker trusts"
                )
            return "tls", f"TLS: {reason}"
        current = current.__cause__ or current.__context__
    return None


def certificate_names(url: str, ca_file: str, cert_file: str, key_file: str, timeout: float = 2.0) -> list[str]:
    """The DNS names and addresses in the broker's certificate (its chain verified, its name not); [] if unknown."""
    parsed = URL(url)
    host, port = parsed.host or "localhost", parsed.port or 5671
    try:
        context = tls_context(url, ca_file, cert_file, key_file)
        if context is None:
            return []
        context.check_hostname = False
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            certificate: dict[str, Any] = dict(tls.getpeercert() or {})
    except (OSError, SettingsError):
        return []
    return [str(value) for kind, value in certificate.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
