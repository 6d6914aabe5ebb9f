"""A secured private RabbitMQ node for tests: TLS only by name, no guest, the users scripts/rabbitmq-access makes.

One node per test module (`secured_node`), mutual TLS; each test gets its own vhost on it (`secured_broker`),
with the aggregator, two producers and the operator given their permissions there by the access script, so tests
never see each other's queues, dead letters or policies.
"""

import json
import secrets
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.process import Names
from tests.support.rabbitnodes import SCRIPT, PrivateNode, RabbitNodes, TlsFiles, TlsListener, make_tls_files

ACCESS_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-access"
# The broker's certificate names localhost only: reaching it as 127.0.0.1 is a host name mismatch.
CERTIFIED_HOST = "localhost"
ROLES = ("aggregator", "producer-a", "producer-b", "operator")


@dataclass(frozen=True)
class SecuredNode:
    """A private node with a mutual-TLS listener, the guest user deleted, and a password file per role."""

    node: PrivateNode
    tls: TlsFiles
    secrets_dir: Path
    token: str

    def user(self, role: str) -> str:
        return f"tickbus-{role}-{self.token}"

    def password_file(self, role: str) -> Path:
        return self.secrets_dir / f"{role}.password"

    def password(self, role: str) -> str:
        return self.password_file(role).read_text().strip()

    @property
    def ctl(self) -> str:
        """The rabbitmqctl command line that reaches this node (for scripts/rabbitmq-access --rabbitmqctl)."""
        return f"{SCRIPT} ctl {self.node.name} --base-dir {self.node.base_dir}"

    def access(self, *args: str) -> subprocess.CompletedProcess[str]:
        """scripts/rabbitmq-access ARGS, run as a user would; its result (not checked)."""
        command = [sys.executable, str(ACCESS_SCRIPT), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@dataclass(frozen=True)
class SecuredBroker:
    """One test's vhost on the secured node: its exchange and queue names, and a URL per role."""

    secured: SecuredNode
    vhost: str
    names: Names

    @property
    def node(self) -> PrivateNode:
        return self.secured.node

    @property
    def tls(self) -> TlsFiles:
        return self.secured.tls

    def user(self, role: str) -> str:
        return self.secured.user(role)

    def password(self, role: str) -> str:
        return self.secured.password(role)

    def url(self, role: str, *, password: bool = False, host: str = CERTIFIED_HOST) -> str:
        """amqps:// as `role`, by `host`; the password in it only with `password` (else it comes from a file)."""
        secret = f":{self.password(role)}" if password else ""
        return f"amqps://{self.user(role)}{secret}@{host}:{self.node.tls_port}/{self.vhost}"

    def amqp_args(
        self, role: str, *, host: str = CERTIFIED_HOST, ca: Path | None = None, certificate: bool = True
    ) -> list[str]:
        """The `aggregator` command's connection options for `role`: TLS files and the password file."""
        args = [
            "--amqp-url", self.url(role, host=host),
            "--amqp-ca-file", str(ca or self.tls.ca),
            "--amqp-password-file", str(self.secured.password_file(role)),
        ]  # fmt: skip
        if certificate:
            args += ["--amqp-cert-file", str(self.tls.client_certificate), "--amqp-key-file", str(self.tls.client_key)]
        return args

    def context(self) -> ssl.SSLContext:
        """A client TLS context trusting the test CA and presenting the client certificate."""
        return self.tls.client_context()

    def rabbitmqctl(self, *args: str) -> str:
        return self.node.rabbitmqctl(*args)

    def queue_length(self, queue: str) -> int:
        rows = json.loads(self.rabbitmqctl("list_queues", "-p", self.vhost, "name", "messages", "--formatter", "json"))
        return int(next(row["messages"] for row in rows if row["name"] == queue))

    def grant(self, *extra: str) -> None:
        """Run scripts/rabbitmq-access apply for this vhost and names (with `extra` options); fail on error."""
        secured = self.secured
        roles = [
            "--aggregator", f"{secured.user('aggregator')}={secured.password_file('aggregator')}",
            "--producer", f"{secured.user('producer-a')}={secured.password_file('producer-a')}",
            "--producer", f"{secured.user('producer-b')}={secured.password_file('producer-b')}",
            "--operator", f"{secured.user('operator')}={secured.password_file('operator')}",
        ]  # fmt: skip
        result = secured.access(
            "apply", *roles, "--vhost", self.vhost, "--exchange", self.names.exchange, "--queue", self.names.queue,
            "--rabbitmqctl", secured.ctl, *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout


@pytest.fixture(scope="module")
def secured_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNode]:
    """One mutual-TLS private node per module (server certificate for localhost only), guest deleted by the
    access script, a random password per role in files."""
    base = tmp_path_factory.mktemp("secured")
    tls = make_tls_files(base / "tls", server_names=(CERTIFIED_HOST,))
    secrets_dir = base / "secrets"
    secrets_dir.mkdir()
    for role in ROLES:
        (secrets_dir / f"{role}.password").write_text(secrets.token_urlsafe(18) + "\n")
    nodes = RabbitNodes()
    try:
        node = nodes.node(tls=TlsListener(tls, verify="verify_peer", fail_if_no_peer_cert=True))
        yield SecuredNode(node, tls, secrets_dir, uuid.uuid4().hex[:6])
    finally:
        nodes.close()


@pytest.fixture
def secured_broker(secured_node: SecuredNode) -> SecuredBroker:
    """A fresh vhost on the module's secured node, with every role's permissions granted there (guest deleted)."""
    token = uuid.uuid4().hex[:8]
    broker = SecuredBroker(secured_node, f"tickbus-{token}", Names.unique("sec"))
    broker.grant("--delete-guest")
    return broker
