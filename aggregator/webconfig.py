"""The web config file (exporter-toolkit format): TLS and basic auth on the HTTP endpoints, reloaded live."""

import dataclasses
import hashlib
import logging
import os
import re
import ssl
import stat
import tempfile
from base64 import b64decode
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import bcrypt
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's crypto/tls asks for a client certificate without verifying it; OpenSSL through Python's ssl
# verifies every certificate it asks for, so these two cannot be honoured.
UNSUPPORTED_CLIENT_AUTH = {
    "RequestClientCert": "Python's ssl cannot ask for a client certificate without verifying it",
    "RequireAnyClientCert": "Python's ssl cannot require a client certificate without verifying it",
    "RequireClientCert": "Python's ssl cannot require a client certificate without verifying it",
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's names of the cipher suites crypto/tls offers for TLS 1.0-1.2, as OpenSSL names them.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are not configurable, in Go as in OpenSSL: accepted, and they change nothing.
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
# The response headers exporter-toolkit lets a web config set, and the values it allows (None: any).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
BCRYPT_HASH = re.compile(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$")
# Verified (user, hash, password) triples kept so that a scrape every second does not cost a bcrypt each.
CACHE_SIZE = 256
_YAML_PLACE = re.compile(r"line (\d+), column (\d+)")


class WebConfigError(ValueError):
    """The web config file is unreadable or invalid; the message names the file and key, never a secret."""


class _Table(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A mapping of the web config file: an unknown key is an error that names the key."""


class _TlsServerConfig(_Table):
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: str = "NoClientCert"
    client_ca_file: str = ""
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: list[str] = []
    prefer_server_cipher_suites: bool = True
    # exporter-toolkit keys tickbus refuses with a reason (see _unsupported).
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    curve_preferences: list[str] | None = None
    client_allowed_sans: list[str] | None = None


class _HttpServerConfig(_Table):
    # aiohttp speaks HTTP/1.1 only: `http2` is accepted (exporter-toolkit files set it) and changes nothing.
    http2: bool = True
    headers: dict[str, str] = {}


class _RateLimit(_Table):
    burst: int = 0
    interval: str = ""


class _WebConfigFile(_Table):
    tls_server_config: _TlsServerConfig | None = None
    http_server_config: _HttpServerConfig = msgspec.field(default_factory=_HttpServerConfig)
    basic_auth_users: dict[str, str] | None = None
    rate_limit: _RateLimit | None = None


@dataclass(frozen=True)
class TlsSettings:
    """The TLS part of a web config, with file paths made absolute (relative ones are to the config's directory)."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str = ""  # OpenSSL's names joined by ':'; empty: Python's defaults
    prefer_server_cipher_suites: bool = True

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    @property
    def restart_only(self) -> tuple[str, Path | None]:
        """What a running listener cannot change: who must show a client certificate, and signed by what."""
        return self.client_auth_type, self.client_ca_file


@dataclass(frozen=True)
class WebConfig:
    """One reading of the web config file: TLS (None: plain HTTP), users and their bcrypt hashes, headers."""

    path: Path
    tls: TlsSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this configuration is read from: a change to any of them is a reason to reload."""
        return (self.path,) + (self.tls.files if self.tls else ())


def _where(path: Path, message: str) -> str:
    """The file, then msgspec's message in the words of the YAML keys (`tls_server_config.min_version`)."""
    return f"{path}: {message.replace('`$.', '`').replace(' - at `$`', '')}"


def load_web_config(path: Path) -> WebConfig:
    """Read and check the web config file at `path`; WebConfigError says what is wrong and where."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise WebConfigError(f"{path}: web config file not found") from None
    except OSError as error:
        raise WebConfigError(f"{path}: cannot read the web config file: {error.strerror or error}") from None
    try:
        # Untyped first: a file of comments only (null) is an empty config, as exporter-toolkit reads it.
        document = msgspec.convert(msgspec.yaml.decode(text) or {}, _WebConfigFile)
    except msgspec.ValidationError as error:
        raise WebConfigError(_where(path, f"invalid web config: {error}")) from None
    except ImportError:  # msgspec reads YAML with PyYAML
        raise WebConfigError(f"{path}: reading a web config needs PyYAML (pip install pyyaml)") from None
    except msgspec.DecodeError as error:
        # The YAML parser may quote the line it stopped at, which can hold a hash or a password
        # pasted by mistake: only its place is told.
        places = _YAML_PLACE.findall(str(error))
        where = f" (line {places[-1][0]}, column {places[-1][1]})" if places else ""
        raise WebConfigError(f"{path}: not valid YAML{where}") from None
    directory = path.parent
    tls = _tls_settings(path, directory, document.tls_server_config)
    users = _users(path, document.basic_auth_users or {})
    headers = _headers(path, document.http_server_config.headers)
    if document.rate_limit is not None:
        raise WebConfigError(f"{path}: `rate_limit` is not supported by tickbus; limit scrapers at a proxy")
    return WebConfig(path=path, tls=tls, users=users, headers=headers)


def _unsupported(tls: _TlsServerConfig) -> str | None:
    """Why a key of tls_server_config cannot be honoured by Python's ssl, or None."""
    if tls.cert is not None or tls.key is not None or tls.client_ca is not None:
        return "inline `cert`, `key` and `client_ca` are not supported; use cert_file, key_file and client_ca_file"
    if tls.curve_preferences is not None:
        return "`curve_preferences` is not supported: Python's ssl cannot set a list of curves"
    if tls.client_allowed_sans is not None:
        return "`client_allowed_sans` is not supported; sign client certificates with a CA of their own instead"
    why = UNSUPPORTED_CLIENT_AUTH.get(tls.client_auth_type)
    if why:
        return f"client_auth_type {tls.client_auth_type!r} is not supported: {why}"
    return None


def _tls_settings(path: Path, directory: Path, tls: _TlsServerConfig | None) -> TlsSettings | None:
    if tls is None:
        return None
    problem = _unsupported(tls)
    if problem:
        raise WebConfigError(f"{path}: tls_server_config: {problem}")
    if not tls.cert_file or not tls.key_file:
        raise WebConfigError(f"{path}: tls_server_config needs both `cert_file` and `key_file`")
    if tls.client_auth_type not in CLIENT_AUTH_TYPES:
        choices = ", ".join(CLIENT_AUTH_TYPES)
        raise WebConfigError(f"{path}: tls_server_config.client_auth_type {tls.client_auth_type!r}: one of {choices}")
    verifies = tls.client_auth_type != "NoClientCert"
    if verifies and not tls.client_ca_file:
        raise WebConfigError(
            f"{path}: tls_server_config.client_auth_type {tls.client_auth_type} needs `client_ca_file`"
        )
    if tls.client_ca_file and not verifies:
        raise WebConfigError(
            f"{path}: tls_server_config.client_ca_file is set but client_auth_type is NoClientCert: "
            "set client_auth_type to VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    versions = []
    for key, name in (("min_version", tls.min_version), ("max_version", tls.max_version)):
        if name not in TLS_VERSIONS:
            raise WebConfigError(f"{path}: tls_server_config.{key} {name!r}: one of {', '.join(TLS_VERSIONS)}")
        versions.append(TLS_VERSIONS[name])
    if versions[0] > versions[1]:
        raise WebConfigError(f"{path}: tls_server_config.min_version is above max_version")
    ciphers = []
    for name in tls.cipher_suites:
        if name in CIPHER_SUITES:
            ciphers.append(CIPHER_SUITES[name])
        elif name not in TLS13_SUITES:
            raise WebConfigError(f"{path}: tls_server_config.cipher_suites: unknown or insecure cipher {name!r}")
    return TlsSettings(
        cert_file=directory / tls.cert_file,
        key_file=directory / tls.key_file,
        client_auth_type=tls.client_auth_type,
        client_ca_file=directory / tls.client_ca_file if tls.client_ca_file else None,
        min_version=versions[0],
        max_version=versions[1],
        ciphers=":".join(dict.fromkeys(ciphers)),
        prefer_server_cipher_suites=tls.prefer_server_cipher_suites,
    )


def _users(path: Path, users: dict[str, str]) -> dict[str, bytes]:
    for user, hashed in users.items():
        if not user or ":" in user:
            raise WebConfigError(f"{path}: basic_auth_users: a user name must be non-empty and hold no ':'")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            # Never the value: it may be a password written where its hash belongs.
            raise WebConfigError(
                f"{path}: basic_auth_users.{user}: not a bcrypt hash (make one with scripts/web-secrets or "
                "`htpasswd -nBC 10 USER`)"
            )
    return {user: hashed.encode() for user, hashed in users.items()}


def _headers(path: Path, headers: dict[str, str]) -> dict[str, str]:
    canonical = {name.lower(): name for name in HEADERS}
    checked = {}
    for name, value in headers.items():
        known = canonical.get(name.lower())
        if known is None:
            raise WebConfigError(
                f"{path}: http_server_config.headers: {name!r} cannot be set; allowed: {', '.join(HEADERS)}"
            )
        allowed = HEADERS[known]
        if allowed is not None and value.lower() not in allowed:
            raise WebConfigError(f"{path}: http_server_config.headers.{known}: one of {', '.join(allowed)}")
        if "\n" in value or "\r" in value:
            raise WebConfigError(f"{path}: http_server_config.headers.{known}: a value is one line")
        checked[known] = value
    return checked


def _default_ciphers() -> str:
    """The TLS 1.2 cipher list of a new server context (Python's default), to go back to when none is set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return ":".join(cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] != "TLSv1.3")


def _apply_tls(context: ssl.SSLContext, tls: TlsSettings, scratch: Path) -> None:
    """Set what can change on a live context: versions, ciphers, certificate and key (read from `scratch`)."""
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    context.set_ciphers(tls.ciphers or _default_ciphers())
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(scratch / "cert.pem", scratch / "key.pem")


class _Snapshot:
    """The certificate and key copied once, so that a context never loads them from different moments of a rotation."""

    def __init__(self, tls: TlsSettings, config: Path) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="tickbus-tls-")
        self.path = Path(self._directory.name)
        for key, source, target in (("cert_file", tls.cert_file, "cert.pem"), ("key_file", tls.key_file, "key.pem")):
            try:
                data = source.read_bytes()
            except OSError as error:
                self.close()
                raise WebConfigError(
                    f"{config}: tls_server_config.{key}: cannot read {source}: {error.strerror or error}"
                ) from None
            try:
                descriptor = os.open(
                    self.path / target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR
                )
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
            except OSError:
                self.close()
                raise

    def close(self) -> None:
        self._directory.cleanup()


def build_ssl_context(config: WebConfig) -> ssl.SSLContext | None:
    """The server context for `config` (None: plain HTTP); WebConfigError names the file that does not load."""
    tls = config.tls
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
        except (OSError, ssl.SSLError) as error:
            raise WebConfigError(
                f"{config.path}: tls_server_config.client_ca_file: cannot load {tls.client_ca_file}: {_reason(error)}"
            ) from None
    _load_tls(context, config)
    return context


def _load_tls(context: ssl.SSLContext, config: WebConfig) -> None:
    """Check the certificate, key, versions and ciphers on a scratch context, then apply them to `context`."""
    tls = config.tls
    assert tls is not None
    try:
        snapshot = _Snapshot(tls, config.path)
    except OSError as error:  # no room or no temporary directory for the copy
        raise WebConfigError(f"{config.path}: cannot copy the certificate and key aside: {_reason(error)}") from None
    try:
        _apply_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls, snapshot.path)
        _apply_tls(context, tls, snapshot.path)
    except (ssl.SSLError, OSError) as error:
        raise WebConfigError(
            f"{config.path}: tls_server_config: the certificate {tls.cert_file} and key {tls.key_file} "
            f"do not load: {_reason(error)}"
        ) from None
    finally:
        snapshot.close()


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _fingerprint(paths: Collection[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells that a file changed: inode, size and modification time (None: not readable)."""

    def one(path: Path) -> tuple[int, int, int] | None:
        try:
            status = path.stat()  # follows symlinks: a Kubernetes secret swaps its `..data` link
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns

    return tuple(map(one, paths))


class WebGuard:
    """The running web config: the live TLS context, the basic-auth check with its cache, the extra headers."""

    def __init__(self, config: WebConfig, ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self._verified: dict[bytes, None] = {}
        # One bcrypt at a time, off the event loop: a flood of wrong passwords queues here instead of
        # stalling ingestion, and cached credentials never wait for it.
        self._bcrypt = anyio.CapacityLimiter(1)
        self._seen = _fingerprint(config.files)

    @classmethod
    def open(cls, path: Path) -> "WebGuard":
        """Load the web config at `path` and build its TLS context; WebConfigError if either fails."""
        config = load_web_config(path)
        return cls(config, build_ssl_context(config))

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def describe(self) -> str:
        """One line for the log: what the endpoints require (never a user's hash)."""
        config = self.config
        parts = ["TLS" if config.tls else "no TLS"]
        if config.tls and config.tls.client_auth_type != "NoClientCert":
            parts.append(f"client certificates ({config.tls.client_auth_type})")
        parts.append(f"basic auth for {len(config.users)} user(s)" if config.users else "no basic auth")
        return ", ".join(parts)

    def changed_on_disk(self) -> bool:
        """Whether the config file or a file it names changed since the last look."""
        now = _fingerprint(self.config.files)
        if now == self._seen:
            return False
        self._seen = now
        return True

    def reload(self) -> list[str]:
        """Read the web config again and apply it; returns what changed. Never raises.

        Users, headers, the certificate and key, TLS versions and ciphers change live. Turning TLS
        on or off, the client certificate policy and its CA take a restart: they are logged and the
        running values stay. A file that does not load is logged and the running config stays.
        """
        old = self.config
        try:
            new = load_web_config(old.path)
        except WebConfigError as error:
            log.error("web config reload refused: %s; the running web config stays", error)
            return []
        changes: list[str] = []
        tls = old.tls
        if (old.tls is None) != (new.tls is None):
            log.warning(
                "web config reload: TLS turned %s in %s, which takes a restart; the endpoints stay %s",
                "off" if new.tls is None else "on",
                old.path,
                "on TLS" if old.tls else "plain HTTP",
            )
        elif old.tls is not None and new.tls is not None:
            if new.tls.restart_only != old.tls.restart_only:
                log.warning(
                    "web config reload: client_auth_type or client_ca_file changed in %s, which takes a restart; "
                    "the running client certificate policy stays",
                    old.path,
                )
            live = dataclasses.replace(
                new.tls, client_auth_type=old.tls.client_auth_type, client_ca_file=old.tls.client_ca_file
            )
            assert self.ssl_context is not None
            try:
                _load_tls(self.ssl_context, WebConfig(old.path, live))
            except WebConfigError as error:
                log.error("web config reload refused: %s; the running certificate and TLS settings stay", error)
                return []
            tls = live
            changes.append(f"TLS certificate {live.cert_file} (re)loaded")
            if live.__dict__ != old.tls.__dict__:
                changed = sorted(name for name, value in live.__dict__.items() if old.tls.__dict__[name] != value)
                changes.append(f"tls_server_config changed: {', '.join(changed)}")
        if new.users != old.users:
            added, removed = sorted(new.users.keys() - old.users.keys()), sorted(old.users.keys() - new.users.keys())
            rehashed = sorted(
                user for user in new.users.keys() & old.users.keys() if new.users[user] != old.users[user]
            )
            described = [f"{what} {', '.join(users)}" for what, users in
                         (("added", added), ("removed", removed), ("new password for", rehashed)) if users]  # fmt: skip
            changes.append(f"basic_auth_users: {'; '.join(described)}")
            self._verified.clear()
        if new.headers != old.headers:
            changes.append(f"http_server_config.headers: {', '.join(sorted(new.headers)) or 'none'}")
        self.config = WebConfig(path=old.path, tls=tls, users=new.users, headers=new.headers)
        self._seen = _fingerprint(self.config.files)
        for change in changes:
            log.info("web config reload: %s", change)
        return changes

    async def watch(self, interval: float) -> None:
        """Reload whenever the config file or a certificate, key or CA file it names changes (polled)."""
        while True:
            await anyio.sleep(interval)
            if self.changed_on_disk():
                log.info("web config: %s or a file it names changed; reloading", self.config.path)
                self.reload()

    async def authenticate(self, authorization: str | None) -> str | None:
        """Why the request's credentials are refused (for the debug log), or None when they are accepted."""
        users = self.config.users
        if not users:
            return None
        if not authorization:
            return "no credentials"
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return "not basic auth"
        try:
            user, separator, password = b64decode(encoded.strip(), validate=True).decode().partition(":")
        except ValueError:
            return "malformed basic auth"
        if not separator:
            return "malformed basic auth"
        hashed = users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed or b"", password.encode()))).digest()
        if hashed is not None and key in self._verified:
            return None
        # An unknown user's password is checked against a known user's hash (and refused whatever the
        # outcome): a wrong user name then takes as long as a wrong password, so timing tells no names.
        against = hashed if hashed is not None else next(iter(users.values()))
        accepted = await anyio.to_thread.run_sync(_checkpw, password.encode(), against, limiter=self._bcrypt)
        if hashed is None:
            return "unknown user"
        if not accepted:
            return "wrong password"
        if len(self._verified) >= CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[key] = None
        return None

    def middleware(self, open_paths: Collection[str] = ()) -> Middleware:
        """An aiohttp middleware: basic auth on every path but `open_paths`, and the configured headers."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            headers = self.config.headers
            if request.path not in open_paths:
                refused = await self.authenticate(request.headers.get("Authorization"))
                if refused is not None:
                    log.debug("refused %s %s from %s: %s", request.method, request.path, request.remote, refused)
                    raise web.HTTPUnauthorized(
                        text="401 Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="tickbus"', **headers}
                    )
            try:
                response = await handler(request)
            except web.HTTPException as error:
                error.headers.update(headers)
                raise
            response.headers.update(headers)
            return response

        return guard


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a password over bcrypt's 72 bytes (bcrypt 5 refuses those)
        return False
