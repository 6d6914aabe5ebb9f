"""The compose stack's RabbitMQ as files: deploy/rabbitmq/rabbitmq.conf, the secrets compose mounts, and a private
node started with them (on its own ports and paths) so that tests prove what `docker compose up` would run."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.deploy import REPO, compose_document, interpolate
from tests.support.process import free_port
from tests.support.rabbitnodes import PrivateNode, RabbitNodes, TlsFiles, TlsListener

RABBITMQ_CONF = REPO / "deploy" / "rabbitmq" / "rabbitmq.conf"
AMQP_SECRETS = REPO / "scripts" / "amqp-secrets"
SECRETS_IN_CONTAINER = "/run/secrets/"
# Set by the test's node itself (scripts/rabbitmq-node): its own ports and the TLS files it copied.
NODE_OWNED = ("listeners.", "ssl_options.cacertfile", "ssl_options.certfile", "ssl_options.keyfile")


def rabbitmq_conf(path: Path = RABBITMQ_CONF) -> dict[str, str]:
    """The settings of a rabbitmq.conf (sysctl format), in order."""
    settings = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def compose_secret_files(directory: Path) -> dict[str, Path]:
    """Each compose secret by name -> the file it mounts, with ./secrets/ read as `directory`."""
    secrets = interpolate(compose_document(), {})["secrets"]
    return {name: directory / Path(secret["file"]).relative_to("secrets") for name, secret in secrets.items()}


def amqp_secret_names() -> set[str]:
    """The compose secrets of the AMQP side: the rabbitmq service's, and the aggregator's amqp-* ones."""
    services = interpolate(compose_document(), {})["services"]
    return {*services["rabbitmq"]["secrets"], *(name for name in services["aggregator"]["secrets"] if "amqp" in name)}


def make_secrets(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/amqp-secrets ARGS DIRECTORY; its result (not checked)."""
    return subprocess.run(
        ["bash", str(AMQP_SECRETS), *args, str(directory)], capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class ComposeBroker:
    """A private node running the compose stack's RabbitMQ configuration, with the secrets in `secrets`."""

    node: PrivateNode
    secrets: Path
    management_port: int

    def url(self, user: str) -> str:
        """amqps:// as `user` (no password: it is in the user's secret file) by the certificate's name localhost."""
        return f"amqps://{user}@localhost:{self.node.tls_port}/"


def start_compose_broker(nodes: RabbitNodes, secrets: Path, work: Path) -> ComposeBroker:
    """Start a node with deploy/rabbitmq/rabbitmq.conf as compose mounts it: every /run/secrets/ path pointed at
    the secrets made in `secrets`, the listener ports (AMQP over TLS, management over HTTPS) its own, and the
    plain listener scripts/rabbitmq-node needs to see the node up kept on loopback."""
    conf = rabbitmq_conf()
    files = compose_secret_files(secrets)
    tls_dir = work / "tls"
    tls_dir.mkdir(parents=True)
    mounted = {value.removeprefix(SECRETS_IN_CONTAINER) for value in conf.values() if value.startswith("/run/")}
    assert mounted <= set(files), f"rabbitmq.conf reads secrets compose does not define: {mounted - set(files)}"
    shutil.copy(files[conf["ssl_options.cacertfile"].removeprefix(SECRETS_IN_CONTAINER)], tls_dir / "ca.pem")
    shutil.copy(files[conf["ssl_options.certfile"].removeprefix(SECRETS_IN_CONTAINER)], tls_dir / "server.pem")
    shutil.copy(files[conf["ssl_options.keyfile"].removeprefix(SECRETS_IN_CONTAINER)], tls_dir / "server.key")
    listener = TlsListener(
        TlsFiles(tls_dir),
        verify=conf["ssl_options.verify"],  # type: ignore[arg-type]
        fail_if_no_peer_cert=conf["ssl_options.fail_if_no_peer_cert"] == "true",
    )
    node = nodes.unstarted(plugins=["rabbitmq_management"], tls=listener)
    node_dir = node.base_dir / node.name
    conf_d = node_dir / "conf.d"
    conf_d.mkdir(parents=True)
    # What compose mounts under /run/secrets: in the node's own directory, which its rabbitmq user can read.
    mounted_dir = node_dir / "secrets"
    mounted_dir.mkdir()
    management_port = free_port()
    lines = ["# deploy/rabbitmq/rabbitmq.conf with this test's ports and paths"]
    for key, shipped in conf.items():
        if key.startswith(NODE_OWNED):
            continue
        value = shipped
        if key == "management.ssl.port":
            value = str(management_port)
        elif shipped.startswith(SECRETS_IN_CONTAINER):
            source = files[shipped.removeprefix(SECRETS_IN_CONTAINER)]
            copy = mounted_dir / source.name
            shutil.copy(source, copy)
            value = str(copy)
        lines.append(f"{key} = {value}")
    lines.append("management.ssl.ip = 127.0.0.1")
    (conf_d / "90-tickbus.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    node.start()
    return ComposeBroker(node, secrets, management_port)
