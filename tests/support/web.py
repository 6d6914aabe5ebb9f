"""The scrape side's TLS and basic auth in tests: web config files, their secrets, and a client that speaks them."""

import base64
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

REPO = Path(__file__).resolve().parents[2]
WEB_SECRETS_SCRIPT = REPO / "scripts" / "web-secrets"
# What scripts/web-secrets writes; compose mounts each at /run/secrets/<name>.
WEB_CONFIG = "tickbus-web.yml"
WEB_CA = "tickbus-web-ca.crt"
PROMETHEUS_PASSWORD = "prometheus-password"
PROMETHEUS_USER = "prometheus"


def bcrypt_hash(password: str, cost: int = 4) -> str:
    """A bcrypt hash of `password`; cost 4 (the least bcrypt allows) keeps the tests fast."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def write_web_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Write `document` as the YAML web config at `path` (replacing it in one rename, as a secret mount does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".new")
    staging.write_text(yaml.safe_dump(dict(document), sort_keys=False), encoding="utf-8")
    staging.replace(path)
    return path


def make_web_secrets(directory: Path, *extra: str) -> Path:
    """Run scripts/web-secrets into `directory` (as a compose user does); returns the directory."""
    result = subprocess.run(
        ["bash", str(WEB_SECRETS_SCRIPT), *extra, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"scripts/web-secrets failed:\n{result.stdout}\n{result.stderr}"
    return directory


@dataclass(frozen=True)
class WebClient:
    """What a scraper brings: the CA it trusts, and optionally basic-auth credentials and a client certificate."""

    ca_file: Path
    user: str | None = None
    password: str | None = None
    client_certificate: tuple[Path, Path] | None = None

    @classmethod
    def for_secrets(cls, directory: Path) -> "WebClient":
        """Prometheus's side of what scripts/web-secrets made in `directory`."""
        password = (directory / PROMETHEUS_PASSWORD).read_text(encoding="utf-8")
        return cls(directory / WEB_CA, PROMETHEUS_USER, password)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.client_certificate is not None:
            context.load_cert_chain(*self.client_certificate)
        return context

    def headers(self) -> dict[str, str]:
        if self.user is None:
            return {}
        token = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def get(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 10) -> tuple[int, Any, bytes]:
        """GET `url`: (status, response headers, body), whatever the status."""
        request = urllib.request.Request(url, headers={**self.headers(), **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context()) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()
