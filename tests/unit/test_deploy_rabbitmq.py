"""The compose stack's RabbitMQ files without a broker: rabbitmq.conf against compose.yaml and the wire contract,
scripts/amqp-secrets (what it writes, with which permissions, idempotently) and scripts/rabbitmq-access."""

import base64
import hashlib
import importlib.machinery
import importlib.util
import json
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from cryptography import x509

from schemas.events import KINDS
from schemas.wire import BATCH_ROUTING_KEY, MAX_MESSAGE_BYTES
from tests.support.composebroker import (
    RABBITMQ_CONF,
    SECRETS_IN_CONTAINER,
    amqp_secret_names,
    compose_secret_files,
    make_secrets,
    rabbitmq_conf,
)
from tests.support.deploy import REPO, bind_mounts, compose_document, interpolate
from tests.support.secured import ACCESS_SCRIPT


def _access_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("rabbitmq_access", str(ACCESS_SCRIPT))
    spec = importlib.util.spec_from_loader("rabbitmq_access", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_rabbitmq_conf_is_tls_only_and_matches_compose() -> None:
    """No plain listener; AMQP over TLS and HTTPS management on the ports compose publishes; every file it reads
    is a secret the rabbitmq service mounts; it is mounted where RabbitMQ reads extra config; definitions at boot;
    the broker's message limit is the aggregator's."""
    conf = rabbitmq_conf()
    service = interpolate(compose_document(), {})["services"]["rabbitmq"]
    assert conf["listeners.tcp"] == "none"
    published = {int(port.split(":")[-1]) for port in service["ports"]}
    assert published == {int(conf["listeners.ssl.default"]), int(conf["management.ssl.port"])}
    assert conf["ssl_options.verify"] == "verify_peer"
    read = {value.removeprefix(SECRETS_IN_CONTAINER) for value in conf.values() if value.startswith("/run/")}
    assert read == set(service["secrets"])
    assert read <= amqp_secret_names()
    assert conf["load_definitions"] == f"{SECRETS_IN_CONTAINER}rabbitmq-definitions.json"
    assert int(conf["max_message_size"]) == MAX_MESSAGE_BYTES
    assert bind_mounts(service)["/etc/rabbitmq/conf.d/90-tickbus.conf"] == RABBITMQ_CONF
    assert "environment" not in service


def test_amqp_secrets_writes_what_compose_mounts(tmp_path: Path) -> None:
    """Every AMQP secret compose mounts is a file the script writes; the broker's certificate is signed by the CA
    for rabbitmq, localhost and TICKBUS_AMQP_SANS; no CA key is left; the directory is closed and out of git;
    nothing secret is printed; a second run keeps certificates and passwords."""
    directory = tmp_path / "secrets"
    made = subprocess.run(
        ["bash", str(REPO / "scripts" / "amqp-secrets"), "--producer", "risk", str(directory)],
        env={"PATH": "/usr/bin:/bin", "TICKBUS_AMQP_SANS": "DNS:broker.desk.example,IP:10.0.0.7"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    files = compose_secret_files(directory)
    for name in amqp_secret_names():
        assert files[name].is_file(), name
    certificate = x509.load_pem_x509_certificate((directory / "rabbitmq.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((directory / "amqp-ca.crt").read_bytes())
    certificate.verify_directly_issued_by(ca)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["rabbitmq", "localhost", "broker.desk.example"]
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / ".gitignore").read_text() == "*\n"
    assert not [path for path in directory.iterdir() if "ca" in path.name and path.suffix == ".key"]
    passwords = {path.name: path.read_text() for path in directory.glob("*-password")}
    assert set(passwords) == {
        "amqp-aggregator-password", "amqp-producer-password", "amqp-operator-password", "rabbitmq-admin-password",
        "amqp-producer-risk-password",
    }  # fmt: skip
    assert all(len(password.strip()) == 32 for password in passwords.values())
    assert all(password.strip() not in made.stdout + made.stderr for password in passwords.values())
    definitions = json.loads((directory / "rabbitmq-definitions.json").read_text())
    assert {user["name"] for user in definitions["users"]} == {
        "tickbus-aggregator", "tickbus-producer", "tickbus-operator", "tickbus-admin", "risk",
    }  # fmt: skip
    before = {path.name: path.read_bytes() for path in directory.iterdir() if path.suffix != ".json"}
    again = make_secrets(directory)
    assert again.returncode == 0, again.stderr
    after = {path.name: path.read_bytes() for path in directory.iterdir() if path.suffix != ".json"}
    assert after == before


def test_the_compose_aggregator_user_is_one_the_definitions_make(tmp_path: Path) -> None:
    """The user in compose's TICKBUS_AMQP_URL is the aggregator the definitions grant, and its password secret is
    the file its hash was made from."""
    directory = tmp_path / "secrets"
    assert make_secrets(directory).returncode == 0
    environment = interpolate(compose_document(), {})["services"]["aggregator"]["environment"]
    user = environment["TICKBUS_AMQP_URL"].removeprefix("amqps://").split("@")[0]
    definitions = json.loads((directory / "rabbitmq-definitions.json").read_text())
    (granted,) = [entry for entry in definitions["users"] if entry["name"] == user]
    secret = compose_secret_files(directory)[
        environment["TICKBUS_AMQP_PASSWORD_FILE"].removeprefix(SECRETS_IN_CONTAINER)
    ]
    digest = base64.b64decode(granted["password_hash"])
    salt = digest[:4]
    assert digest[4:] == hashlib.sha256(salt + secret.read_text().strip().encode()).digest()
    (permissions,) = [entry for entry in definitions["permissions"] if entry["user"] == user]
    assert permissions["write"] == r"^(metrics\.dead|tickbus\.aggregator|tickbus\.aggregator\.dead)$"


def test_rabbitmq_access_knows_every_routing_key_and_hashes_as_rabbitmq_does() -> None:
    """The producer's topic permission lists exactly the wire format's routing keys (every kind and `batch`);
    the hash is RabbitMQ's salted SHA-256, fresh salt each time."""
    module = _access_module()
    assert set(module.ROUTING_KEYS) == {*KINDS, BATCH_ROUTING_KEY}
    first, second = module.password_hash("s3cret"), module.password_hash("s3cret")
    assert first != second
    for encoded in (first, second):
        raw = base64.b64decode(encoded)
        assert raw[4:] == hashlib.sha256(raw[:4] + b"s3cret").digest()


def test_rabbitmq_access_refuses_bad_roles_and_keys(tmp_path: Path) -> None:
    """A role without a password file, an empty password file, one user in two roles, an unknown routing key:
    each exits 2 naming the problem."""
    secret = tmp_path / "p"
    secret.write_text("pw\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = {
        "--producer takes USER=PASSWORD_FILE": ["--producer", "alice"],
        "is empty": ["--producer", f"alice={empty}"],
        "is given two roles": ["--producer", f"alice={secret}", "--aggregator", f"alice={secret}"],
        "with keys among": ["--producer", f"alice={secret}", "--producer-keys", "alice=signal,telepathy"],
        "which no --producer gives": ["--producer", f"alice={secret}", "--producer-keys", "bob=signal"],
    }
    for message, args in cases.items():
        result = subprocess.run(
            [sys.executable, str(ACCESS_SCRIPT), "definitions", *args], capture_output=True, text=True, check=False
        )
        assert result.returncode == 2, message
        assert message in result.stderr, (message, result.stderr)
