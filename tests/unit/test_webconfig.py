"""The web config: the exporter-toolkit format read strictly, TLS and basic auth on the real HTTP endpoints
(an aiohttp server on loopback, certificates from trustme), live reloads, and secrets kept out of every message."""

import contextlib
import logging
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import bcrypt
import pytest
from prometheus_client.registry import CollectorRegistry

from aggregator.config import ConfigError, Settings, load_settings
from aggregator.exposition import Exposition
from aggregator.http import PROBES, Readiness, make_app, start_http
from aggregator.reload import Reloader
from aggregator.webconfig import CACHE_SIZE, WebConfigError, WebGuard, load_web_config
from tests.support.engine import make_ingest, read_view
from tests.support.process import free_port
from tests.support.rabbitnodes import TlsFiles, make_tls_files
from tests.support.web import WebClient, bcrypt_hash, write_web_config

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another long password 1234"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate (trustme)."""
    return make_tls_files(tmp_path / "tls")


def _config(tls: TlsFiles | None, users: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = dict(extra)
    if tls is not None:
        document["tls_server_config"] = {"cert_file": "tls/server.pem", "key_file": "tls/server.key",
                                         **document.pop("tls_extra", {})}  # fmt: skip
    if users is not None:
        document["basic_auth_users"] = users
    return document


def _web_config(tmp_path: Path, document: dict[str, Any]) -> Path:
    return write_web_config(tmp_path / "web.yml", document)


@contextlib.asynccontextmanager
async def _serving(guard: WebGuard, open_paths: tuple[str, ...] = PROBES) -> AsyncIterator[str]:
    """The aggregator's app (http.py) behind `guard` on a free loopback port; yields its base URL."""
    ingest = make_ingest()
    app = make_app(
        Exposition(read_view(ingest)),
        CollectorRegistry(),
        lambda: Readiness(True, "test"),
        middlewares=[guard.middleware(open_paths)],
    )
    port = free_port()
    runner = await start_http(app, "127.0.0.1", port, guard.ssl_context)
    try:
        yield f"{guard.scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _serve(guard: WebGuard, check: Callable[[str], None], open_paths: tuple[str, ...] = PROBES) -> None:
    """Run `check(base_url)` in a thread (it blocks on urllib) while the app serves."""

    async def main() -> None:
        async with _serving(guard, open_paths) as url:
            await anyio.to_thread.run_sync(check, url)

    anyio.run(main)


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt verification made, by the hash it checked against."""
    calls: list[bytes] = []
    original = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def test_an_exporter_toolkit_file_loads_with_paths_relative_to_it(tmp_path: Path, tls: TlsFiles) -> None:
    """TLS versions, ciphers, client certificates, users and headers are read; file paths are relative to the file."""
    hashed = bcrypt_hash(PASSWORD)
    path = _web_config(tmp_path, {
        "tls_server_config": {
            "cert_file": "tls/server.pem", "key_file": "tls/server.key", "client_auth_type": "VerifyClientCertIfGiven",
            "client_ca_file": "tls/ca.pem", "min_version": "TLS13", "max_version": "TLS13",
            "cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
            "prefer_server_cipher_suites": False,
        },
        "http_server_config": {"http2": False, "headers": {"x-frame-options": "deny"}},
        "basic_auth_users": {"prometheus": hashed},
    })  # fmt: skip
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "tls" / "server.pem"
    assert config.tls.client_ca_file == tmp_path / "tls" / "ca.pem"
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.ciphers == "ECDHE-RSA-AES128-GCM-SHA256"
    assert config.users == {"prometheus": hashed.encode()}
    assert config.headers == {"X-Frame-Options": "deny"}
    assert set(config.files) == {path, *(tmp_path / "tls" / name for name in ("server.pem", "server.key", "ca.pem"))}
    guard = WebGuard.open(path)
    assert guard.ssl_context is not None
    assert guard.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert guard.describe() == "TLS, client certificates (VerifyClientCertIfGiven), basic auth for 1 user(s)"
    # An empty file is a valid web config: plain HTTP, no auth (as exporter-toolkit reads it).
    empty = tmp_path / "empty.yml"
    for text in ("", "# nothing yet\n"):
        empty.write_text(text)
        assert WebGuard.open(empty).ssl_context is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_versoin": "TLS12"}},
         "unknown field `min_versoin` - at `tls_server_config`"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS14"}},
         "tls_server_config.min_version 'TLS14': one of TLS10, TLS11, TLS12, TLS13"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS13", "max_version": "TLS12"}},
         "min_version is above max_version"),
        ({"tls_server_config": {"cert_file": "c"}}, "needs both `cert_file` and `key_file`"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "RequireAnyClientCert"}},
         "'RequireAnyClientCert' is not supported: Python's ssl cannot require a client certificate without"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "Sometimes"}},
         "client_auth_type 'Sometimes': one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "RequireAndVerifyClientCert"}},
         "RequireAndVerifyClientCert needs `client_ca_file`"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_ca_file": "ca"}},
         "client_ca_file is set but client_auth_type is NoClientCert"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "curve_preferences": ["X25519"]}},
         "`curve_preferences` is not supported"),
        ({"tls_server_config": {"cert": "PEM", "key": "PEM"}},
         "inline `cert`, `key` and `client_ca` are not supported"),
        ({"tls_server_config": {"cert_file": "c", "key_file": "k", "cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}},
         "unknown or insecure cipher 'TLS_RSA_WITH_RC4_128_SHA'"),
        ({"http_server_config": {"headers": {"Set-Cookie": "a=b"}}}, "'Set-Cookie' cannot be set"),
        ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
         "headers.X-Frame-Options: one of deny, sameorigin"),
        ({"basic_auth_users": {"a:b": "$2b$04$" + "a" * 53}}, "hold no ':'"),
        ({"basic_auth_users": ["prometheus"]}, "Expected `object | null`, got `array` - at `basic_auth_users`"),
        ({"rate_limit": {"burst": 1, "interval": "1s"}}, "`rate_limit` is not supported"),
    ],
)  # fmt: skip
def test_mistakes_are_refused_naming_the_key(tmp_path: Path, document: dict[str, Any], message: str) -> None:
    """Each mistake or unsupported exporter-toolkit setting is one error naming the file, the key and why."""
    path = _web_config(tmp_path, document)
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"{path}: ")


def test_errors_never_quote_a_secret(tmp_path: Path) -> None:
    """A password written where its hash belongs, or a hash on a line YAML cannot parse, is never echoed."""
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: {PASSWORD}\n")
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert "basic_auth_users.prometheus: not a bcrypt hash" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    hashed = bcrypt_hash(PASSWORD)
    path.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n  : [{hashed}\n")
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert "not valid YAML (line" in str(raised.value)
    assert hashed not in str(raised.value)
    assert hashed[7:20] not in str(raised.value)
    missing = tmp_path / "nowhere.yml"
    with pytest.raises(WebConfigError, match="web config file not found"):
        load_web_config(missing)


def test_a_key_that_does_not_match_the_certificate_is_refused_at_start(tmp_path: Path, tls: TlsFiles) -> None:
    """The certificate and key are loaded when the web config is opened: a wrong pair stops the start, named."""
    shutil.copy(tls.client_key, tls.directory / "server.key")
    path = _web_config(tmp_path, _config(tls))
    with pytest.raises(WebConfigError, match=r"tls_server_config: the certificate .*server.pem and key .*server.key"):
        WebGuard.open(path)
    (tls.directory / "server.key").unlink()
    with pytest.raises(WebConfigError, match=r"tls_server_config.key_file: cannot read .*server.key"):
        WebGuard.open(path)


def test_tls_and_basic_auth_guard_metrics_and_leave_the_probes_open(tmp_path: Path, tls: TlsFiles) -> None:
    """Over TLS: /metrics needs the password (401 with a Basic challenge otherwise), the probes do not, the
    configured headers are on every answer, and plain HTTP gets nothing."""
    document = _config(tls, {"prometheus": bcrypt_hash(PASSWORD)},
                       http_server_config={"headers": {"X-Content-Type-Options": "nosniff"}})  # fmt: skip
    guard = WebGuard.open(_web_config(tmp_path, document))
    right = WebClient(tls.ca, "prometheus", PASSWORD)

    def check(url: str) -> None:
        status, headers, body = right.get(f"{url}/metrics")
        assert status == 200
        assert b"# TYPE tickbus_events_received_total counter" in body
        assert headers["X-Content-Type-Options"] == "nosniff"
        for client in (WebClient(tls.ca), WebClient(tls.ca, "prometheus", "wrong"), WebClient(tls.ca, "eve", PASSWORD)):
            status, headers, body = client.get(f"{url}/metrics")
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Basic realm="tickbus"'
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert b"tickbus_" not in body
        for probe in PROBES:
            assert WebClient(tls.ca).get(f"{url}{probe}")[0] == 200
        # Any other path asks for credentials too: a route added later is guarded by default.
        assert WebClient(tls.ca).get(f"{url}/debug")[0] == 401
        assert right.get(f"{url}/debug")[0] == 404
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            WebClient(tls.ca).get(url.replace("https://", "http://") + "/healthz", timeout=3)

    _serve(guard, check)


def test_probes_need_auth_when_asked(tmp_path: Path, tls: TlsFiles) -> None:
    """With no open paths (http.probes_need_auth = true) the probes ask for credentials, as exporter-toolkit does."""
    guard = WebGuard.open(_web_config(tmp_path, _config(tls, {"prometheus": bcrypt_hash(PASSWORD)})))

    def check(url: str) -> None:
        for probe in PROBES:
            assert WebClient(tls.ca).get(f"{url}{probe}")[0] == 401
            assert WebClient(tls.ca, "prometheus", PASSWORD).get(f"{url}{probe}")[0] == 200

    _serve(guard, check, open_paths=())
    assert load_settings(None, {"http.probes_need_auth": True}).http.probes_need_auth


def test_a_verified_password_is_cached_and_a_wrong_one_always_costs_a_bcrypt(
    tmp_path: Path, bcrypt_calls: list[bytes]
) -> None:
    """A scrape every second costs one bcrypt in all; a wrong password or an unknown user costs one each time,
    checked against a real user's hash so that the time taken does not tell which users exist."""
    hashed = bcrypt_hash(PASSWORD)
    guard = WebGuard.open(_web_config(tmp_path, _config(None, {"prometheus": hashed})))
    right = WebClient(Path(), "prometheus", PASSWORD).headers()["Authorization"]
    wrong = WebClient(Path(), "prometheus", "wrong").headers()["Authorization"]
    unknown = WebClient(Path(), "eve", PASSWORD).headers()["Authorization"]

    async def main() -> None:
        for _ in range(5):
            assert await guard.authenticate(right) is None
        assert len(bcrypt_calls) == 1
        for _ in range(3):
            assert await guard.authenticate(wrong) == "wrong password"
            assert await guard.authenticate(unknown) == "unknown user"
        assert bcrypt_calls == [hashed.encode()] * 7
        assert await guard.authenticate(None) == "no credentials"
        assert await guard.authenticate("Bearer abc") == "not basic auth"
        assert await guard.authenticate("Basic !!!") == "malformed basic auth"
        assert len(bcrypt_calls) == 7

    anyio.run(main)


def test_the_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many distinct credentials verify, the cache keeps at most CACHE_SIZE of them."""
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: True)
    users = {f"user{index}": bcrypt_hash("x") for index in range(3)}
    guard = WebGuard.open(_web_config(tmp_path, _config(None, users)))

    async def main() -> None:
        for index in range(CACHE_SIZE + 50):
            assert await guard.authenticate(WebClient(Path(), "user1", f"pw{index}").headers()["Authorization"]) is None

    anyio.run(main)
    assert len(guard._verified) == CACHE_SIZE


def test_reload_changes_users_live_and_forgets_the_old_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new hash in the file: after reload the old (cached) password is refused and the new one accepted;
    the log names the users, never a password or a hash."""
    old_hash, new_hash = bcrypt_hash(PASSWORD), bcrypt_hash(OTHER_PASSWORD)
    path = _web_config(tmp_path, _config(None, {"prometheus": old_hash, "grafana": old_hash}))
    guard = WebGuard.open(path)
    old = WebClient(Path(), "prometheus", PASSWORD).headers()["Authorization"]
    new = WebClient(Path(), "prometheus", OTHER_PASSWORD).headers()["Authorization"]
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        assert await guard.authenticate(old) is None
        _web_config(tmp_path, _config(None, {"prometheus": new_hash, "alice": new_hash}))
        assert guard.reload() == ["basic_auth_users: added alice; removed grafana; new password for prometheus"]
        assert await guard.authenticate(old) == "wrong password"
        assert await guard.authenticate(new) is None

    anyio.run(main)
    for secret in (PASSWORD, OTHER_PASSWORD, old_hash, new_hash, old_hash[7:29], new_hash[7:29]):
        assert secret not in caplog.text


def test_a_file_that_does_not_load_keeps_the_running_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broken edit is logged and refused; the running users stay."""
    hashed = bcrypt_hash(PASSWORD)
    path = _web_config(tmp_path, _config(None, {"prometheus": hashed}))
    guard = WebGuard.open(path)
    path.write_text("basic_auth_users: [\n")
    assert guard.reload() == []
    assert "web config reload refused" in caplog.text
    assert guard.config.users == {"prometheus": hashed.encode()}


def test_reload_rotates_the_certificate_for_new_connections(tmp_path: Path, tls: TlsFiles) -> None:
    """New certificate and key (another CA) on disk, reload: new connections get them, on the same listener."""
    guard = WebGuard.open(_web_config(tmp_path, _config(tls)))
    renewed = make_tls_files(tmp_path / "renewed")

    def check(url: str) -> None:
        assert WebClient(tls.ca).get(f"{url}/healthz")[0] == 200
        for name in ("server.pem", "server.key"):
            shutil.copy(renewed.directory / name, tls.directory / name)
        assert guard.reload()[0].startswith("TLS certificate ")
        assert WebClient(renewed.ca).get(f"{url}/healthz")[0] == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            WebClient(tls.ca).get(f"{url}/healthz")

    _serve(guard, check)


def test_a_reload_with_a_mismatched_pair_keeps_the_running_certificate(
    tmp_path: Path, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a rotation on disk (a new certificate, the old key): refused; the listener keeps serving the old pair."""
    guard = WebGuard.open(_web_config(tmp_path, _config(tls)))
    renewed = make_tls_files(tmp_path / "renewed")

    def check(url: str) -> None:
        shutil.copy(renewed.directory / "server.pem", tls.directory / "server.pem")
        assert guard.reload() == []
        assert "the running certificate and TLS settings stay" in caplog.text
        assert WebClient(tls.ca).get(f"{url}/healthz")[0] == 200

    _serve(guard, check)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path: Path, tls: TlsFiles) -> None:
    """RequireAndVerifyClientCert: no handshake without a certificate signed by client_ca_file."""
    document = _config(
        tls, tls_extra={"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "tls/ca.pem"}
    )
    guard = WebGuard.open(_web_config(tmp_path, document))
    stranger = make_tls_files(tmp_path / "stranger")

    def check(url: str) -> None:
        with_certificate = WebClient(tls.ca, client_certificate=(tls.client_certificate, tls.client_key))
        assert with_certificate.get(f"{url}/metrics")[0] == 200
        for client in (WebClient(tls.ca), WebClient(tls.ca, client_certificate=(stranger.client_certificate,
                                                                                 stranger.client_key))):  # fmt: skip
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                client.get(f"{url}/metrics")

    _serve(guard, check)


def test_min_version_is_enforced(tmp_path: Path, tls: TlsFiles) -> None:
    """min_version TLS13: a client that stops at TLS 1.2 is refused in the handshake."""
    guard = WebGuard.open(_web_config(tmp_path, _config(tls, tls_extra={"min_version": "TLS13"})))

    def check(url: str) -> None:
        assert WebClient(tls.ca).get(f"{url}/healthz")[0] == 200
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(urllib.error.URLError, match=r"\[SSL"):
            urllib.request.urlopen(f"{url}/healthz", timeout=5, context=context)

    _serve(guard, check)


def test_client_certificate_policy_changes_take_a_restart(
    tmp_path: Path, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """Switching client certificates on in a reload is logged as needing a restart; the running policy stays."""
    path = _web_config(tmp_path, _config(tls))
    guard = WebGuard.open(path)
    _web_config(tmp_path, _config(tls, tls_extra={"client_auth_type": "RequireAndVerifyClientCert",
                                                  "client_ca_file": "tls/ca.pem"}))  # fmt: skip
    guard.reload()
    assert "client_auth_type or client_ca_file changed" in caplog.text
    assert guard.ssl_context is not None
    assert guard.ssl_context.verify_mode == ssl.CERT_NONE
    assert guard.config.tls is not None
    assert guard.config.tls.client_auth_type == "NoClientCert"
    _web_config(tmp_path, _config(None))
    assert guard.reload() == []
    assert "TLS turned off" in caplog.text
    assert guard.config.tls is not None


def test_the_watcher_reloads_when_a_named_file_changes(tmp_path: Path, tls: TlsFiles) -> None:
    """Polling sees the web config or its certificate change (renamed into place, as secret mounts do); it reloads."""
    path = _web_config(tmp_path, _config(tls, {"prometheus": bcrypt_hash(PASSWORD)}))
    guard = WebGuard.open(path)
    assert not guard.changed_on_disk()
    renewed = make_tls_files(tmp_path / "renewed")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(guard.watch, 0.05)
            _web_config(tmp_path, _config(tls, {"alice": bcrypt_hash(PASSWORD)}))
            with anyio.fail_after(10):
                while "alice" not in guard.config.users:
                    await anyio.sleep(0.05)
            (tls.directory / "server.pem.new").write_bytes((renewed.directory / "server.pem").read_bytes())
            (tls.directory / "server.key.new").write_bytes((renewed.directory / "server.key").read_bytes())
            (tls.directory / "server.key.new").replace(tls.directory / "server.key")
            (tls.directory / "server.pem.new").replace(tls.directory / "server.pem")
            await anyio.sleep(0.5)
            group.cancel_scope.cancel()
        async with _serving(guard) as url:
            status = await anyio.to_thread.run_sync(lambda: WebClient(renewed.ca).get(f"{url}/healthz")[0])
            assert status == 200

    anyio.run(main)


def test_sighup_reload_reads_the_web_config_even_when_the_settings_do_not_load(tmp_path: Path) -> None:
    """The Reloader (SIGHUP) applies a changed web config, and still does when the TOML file is broken."""
    path = _web_config(tmp_path, _config(None, {"prometheus": bcrypt_hash(PASSWORD)}))
    guard = WebGuard.open(path)
    settings = Settings()
    broken = [False]

    def load() -> Settings:
        if broken[0]:
            raise ConfigError("tickbus.toml: not valid TOML")
        return settings

    reloader = Reloader(load, settings, make_ingest(), guard)
    _web_config(tmp_path, _config(None, {"alice": bcrypt_hash(PASSWORD)}))
    assert reloader.reload() == ["basic_auth_users: added alice; removed prometheus"]
    broken[0] = True
    _web_config(tmp_path, _config(None, {"bob": bcrypt_hash(PASSWORD)}))
    assert reloader.reload() == ["basic_auth_users: added bob; removed alice"]


def test_the_listen_address_defaults_to_loopback() -> None:
    """Nothing outside the machine reads the metrics unless the operator chooses an address (docs/security.md)."""
    assert Settings().http.host == "127.0.0.1"
    assert load_settings(None, {"http.host": "0.0.0.0"}).http.host == "0.0.0.0"


def test_without_pyyaml_the_error_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """msgspec reads YAML with PyYAML: where it is not installed, the start fails with one line saying so."""
    path = _web_config(tmp_path, _config(None, {"prometheus": bcrypt_hash(PASSWORD)}))
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(WebConfigError, match=r"web.yml: reading a web config needs PyYAML"):
        load_web_config(path)


def test_a_reload_that_cannot_copy_the_certificate_aside_keeps_running(
    tmp_path: Path, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No room for the certificate's copy (a full /tmp): the reload is refused with why, nothing raises."""
    guard = WebGuard.open(_web_config(tmp_path, _config(tls)))

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", full)
    assert guard.reload() == []
    assert "cannot copy the certificate and key aside: No space left on device" in caplog.text
