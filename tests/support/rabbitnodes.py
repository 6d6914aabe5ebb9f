"""Private RabbitMQ nodes for tests (single, TLS, three-node clusters) over scripts/rabbitmq-node, and their fixtures.

A test that needs a broker of its own never reconfigures the shared node on 5672: it asks for
`private_node`, `tls_node` or `rabbit_cluster` (or calls `rabbit_nodes.node(...)` /
`rabbit_nodes.cluster(...)` for other shapes). Every node gets a unique name, its own ports and a
directory under a fresh base directory; all of them are stopped and deleted after the test, whether
it passed or not.
"""

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import trustme

from tests.support.process import free_port
from tests.support.scrape import wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-node"
HOST = "localhost"
CONSISTENT_HASH_PLUGIN = "rabbitmq_consistent_hash_exchange"
SHARED_DIST_PORT = 25672
_PORT_TAKEN = ("is already in use on 127.0.0.1", "eaddrinuse")


class RabbitNodeError(RuntimeError):
    """scripts/rabbitmq-node failed; the message holds what it printed (the node's log tail on a failed start)."""


def run_script(command: str, name: str, base_dir: Path, *args: str, timeout: float = 180) -> str:
    """Run `scripts/rabbitmq-node COMMAND NAME ARGS --base-dir BASE_DIR`; its stdout, or RabbitNodeError."""
    argv = [str(SCRIPT), command, name, *args, "--base-dir", str(base_dir)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RabbitNodeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}{result.stdout}".rstrip())
    return result.stdout


@dataclass(frozen=True)
class TlsFiles:
    """One test's TLS material: a CA, a server certificate for localhost and 127.0.0.1, a client certificate.

    `directory` holds ca.pem, server.pem and server.key (what `rabbitmq-node start --cert-dir` takes)
    and client.pem and client.key.
    """

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def client_certificate(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        """A client context that trusts this CA, checks host names and (by default) presents the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_certificate:
            context.load_cert_chain(self.client_certificate, self.client_key)
        return context


def make_tls_files(directory: Path, server_names: Sequence[str] = (HOST, "127.0.0.1")) -> TlsFiles:
    """Write a fresh CA, a server certificate for `server_names` and a client certificate into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*server_names)
    client = ca.issue_cert("tickbus-test-client")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    return TlsFiles(directory)


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener's material and RabbitMQ `ssl_options`: verify, and whether a client must present a certificate."""

    files: TlsFiles
    verify: Literal["verify_peer", "verify_none"] = "verify_peer"
    fail_if_no_peer_cert: bool = False


@dataclass
class PrivateNode:
    """One private node: NAME@localhost with its own ports and directory (base_dir/NAME), driven by the script."""

    name: str
    base_dir: Path
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=lambda: _free_port_except(SHARED_DIST_PORT))
    plugins: tuple[str, ...] = ()
    tls: TlsListener | None = None
    tls_port: int | None = None

    def __post_init__(self) -> None:
        if self.tls is not None and self.tls_port is None:
            self.tls_port = free_port()

    @property
    def node_name(self) -> str:
        return f"{self.name}@{HOST}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def tls_url(self) -> str:
        """amqps:// by the name the server certificate carries (localhost)."""
        if self.tls_port is None:
            raise ValueError(f"{self.node_name} has no TLS listener")
        return f"amqps://guest:guest@{HOST}:{self.tls_port}/"

    @property
    def log_path(self) -> Path:
        return self.base_dir / self.name / "log" / f"{self.node_name}.log"

    def start(self) -> "PrivateNode":
        """Start (or restart, on its data) the node and wait until it answers; RabbitNodeError with its log if not."""
        # --stop-with: should this test run be killed before its clean-up, the node stops by itself.
        args = ["--amqp-port", str(self.amqp_port), "--dist-port", str(self.dist_port), "--stop-with", str(os.getpid())]
        if self.plugins:
            args += ["--plugins", ",".join(self.plugins)]
        if self.tls is not None:
            args += [
                "--tls-port", str(self.tls_port),
                "--cert-dir", str(self.tls.files.directory),
                "--tls-verify", self.tls.verify,
                "--tls-fail-if-no-peer-cert", "true" if self.tls.fail_if_no_peer_cert else "false",
            ]  # fmt: skip
        run_script("start", self.name, self.base_dir, *args)
        return self

    def stop(self, purge: bool = False, now: bool = False) -> None:
        """Graceful stop (SIGKILL with `now`); with `purge` its directory goes too."""
        run_script("stop", self.name, self.base_dir, *(["--purge"] if purge else []), *(["--now"] if now else []))

    def kill(self) -> None:
        """kill -9 of the node's beam: a crash, its data left as it was."""
        run_script("kill", self.name, self.base_dir)

    def restart(self) -> "PrivateNode":
        """Start the node again on its data and ports (after `kill` or `stop`)."""
        return self.start()

    def join(self, other: "PrivateNode") -> None:
        """Make this node a member of `other`'s cluster."""
        run_script("join", self.name, self.base_dir, "--to", other.node_name)

    def rabbitmqctl(self, *args: str) -> str:
        """`rabbitmqctl -q -n NODE ARGS` as the rabbitmq user; its stdout."""
        return run_script("ctl", self.name, self.base_dir, *args, timeout=120)

    def running(self) -> bool:
        try:
            run_script("status", self.name, self.base_dir, timeout=60)
        except RabbitNodeError:
            return False
        return True

    def running_nodes(self) -> set[str]:
        """The cluster members this node sees running (itself included)."""
        status = json.loads(self.rabbitmqctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])


@dataclass
class Cluster:
    """Private nodes joined into one cluster; `nodes[0]` is the one the others joined."""

    nodes: list[PrivateNode]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def wait_for_cluster(self, members: Iterable[PrivateNode] | None = None, timeout: float = 60.0) -> None:
        """Wait until each of `members` (default: every node) sees exactly `members` running."""
        expected = list(self.nodes if members is None else members)
        names = {node.node_name for node in expected}

        def agreed() -> bool:
            with ThreadPoolExecutor(max_workers=len(expected)) as pool:
                return all(seen == names for seen in pool.map(PrivateNode.running_nodes, expected))

        wait_for(agreed, timeout=timeout, interval=0.5, what=f"the cluster to be {sorted(names)}")

    def survivors(self, gone: PrivateNode) -> list[PrivateNode]:
        return [node for node in self.nodes if node is not gone]


class RabbitNodes:
    """Starts private nodes for one test; `close()` stops every one and deletes its files, however the test ended."""

    def __init__(self, base_parent: Path | None = None) -> None:
        # The nodes run as the rabbitmq user: their base directory must be one it can reach.
        self.base_dir = Path(tempfile.mkdtemp(prefix="tickbus-rabbit-", dir=base_parent or "/tmp"))
        self.base_dir.chmod(0o755)
        self.token = uuid.uuid4().hex[:8]
        self.nodes: list[PrivateNode] = []

    def unstarted(self, plugins: Sequence[str] = (), tls: TlsListener | None = None) -> PrivateNode:
        """A node with a unique name and free ports, stopped and deleted with the others, that the caller starts."""
        node = PrivateNode(f"tickbus-{self.token}-{len(self.nodes)}", self.base_dir, plugins=tuple(plugins), tls=tls)
        self.nodes.append(node)
        return node

    def _start(self, node: PrivateNode, attempts: int = 3) -> PrivateNode:
        """Start a node; if another process took one of its free ports meanwhile, again on new ones."""
        try:
            return node.start()
        except RabbitNodeError as error:
            if attempts <= 1 or not any(sign in str(error) for sign in _PORT_TAKEN):
                raise
        node.stop(purge=True)
        node.amqp_port, node.dist_port = free_port(), _free_port_except(SHARED_DIST_PORT)
        node.tls_port = free_port() if node.tls is not None else None
        return self._start(node, attempts - 1)

    def node(self, plugins: Sequence[str] = (), tls: TlsListener | None = None) -> PrivateNode:
        """A started private node, with `plugins` enabled and a TLS listener if `tls` is given."""
        return self._start(self.unstarted(plugins, tls))

    def cluster(self, size: int = 3, plugins: Sequence[str] = ()) -> Cluster:
        """`size` private nodes started side by side, joined one by one to the first, and agreeing on membership."""
        nodes = [self.unstarted(plugins) for _ in range(size)]
        with ThreadPoolExecutor(max_workers=size) as pool:
            list(pool.map(self._start, nodes))
        for node in nodes[1:]:
            node.join(nodes[0])
        cluster = Cluster(nodes)
        cluster.wait_for_cluster()
        return cluster

    def close(self) -> None:
        """Stop every node (side by side) and delete the base directory; raise the first failure after trying all."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            failures = [
                error
                for error in pool.map(self._stop_quietly, self.nodes)
                if error is not None
            ]  # fmt: skip
        if failures:
            raise failures[0]
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _stop_quietly(self, node: PrivateNode) -> RabbitNodeError | None:
        try:
            node.stop(purge=True, now=True)  # its data is deleted: no graceful shutdown to wait for
        except RabbitNodeError as error:
            return error
        return None


def _free_port_except(taken: int) -> int:
    while (port := free_port()) == taken:
        pass
    return port


@pytest.fixture
def rabbit_nodes() -> Iterator[RabbitNodes]:
    """Start private nodes with `.node(...)` or `.cluster(...)`; all are stopped and deleted after the test."""
    nodes = RabbitNodes()
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def private_node(rabbit_nodes: RabbitNodes) -> PrivateNode:
    """A plain private node (AMQP on its own port, no plugins) that the test may stop, restart or kill."""
    return rabbit_nodes.node()


@pytest.fixture(scope="module")
def module_private_node() -> Iterator[PrivateNode]:
    """One plain private node for every test of a module that asks for it (a start saved per test); a test
    that stops its application starts it again before it ends."""
    nodes = RabbitNodes()
    try:
        yield nodes.node()
    finally:
        nodes.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A fresh CA, a server certificate for localhost and 127.0.0.1, and a client certificate."""
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_node(rabbit_nodes: RabbitNodes, tls_files: TlsFiles) -> PrivateNode:
    """A private node with a TLS listener (`tls_url`) for mutual TLS: verify_peer, fail_if_no_peer_cert true.

    Clients trust `tls_files.ca` and present `tls_files.client_certificate` (`tls_files.client_context()`).
    """
    return rabbit_nodes.node(tls=TlsListener(tls_files, verify="verify_peer", fail_if_no_peer_cert=True))


@pytest.fixture
def rabbit_cluster(rabbit_nodes: RabbitNodes) -> Cluster:
    """Three private nodes joined into one cluster, every one seeing all three running."""
    return rabbit_nodes.cluster(3)
