"""The locked environment: every dependency pinned with hashes, installed as pinned, and used by the image."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.deploy import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def _pins(name: str) -> dict[str, str]:
    """Package -> pinned version in one lock file; asserts every pin carries hashes."""
    pins: dict[str, str] = {}
    lines = (LOCKS / name).read_text().splitlines()
    for number, line in enumerate(lines):
        match = _PIN.match(line)
        if match:
            assert "--hash=sha256:" in lines[number + 1], f"{name}: {line} has no hash"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(section: list[str]) -> list[Requirement]:
    return [Requirement(text) for text in section]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    """Runtime, build and dev dependencies each have a pin, inside the range pyproject.toml allows."""
    project = _pyproject()
    runtime, build, dev = _pins("runtime.txt"), _pins("build.txt"), _pins("dev.txt")
    base = _requirements(project["project"]["dependencies"])  # type: ignore[index]
    extras = project["project"]["optional-dependencies"]  # type: ignore[index]
    checks = [
        (runtime, [*base, *_requirements(extras["aggregator"])]),
        (_pins("producer.txt"), base),
        (build, _requirements(project["build-system"]["requires"])),  # type: ignore[index]
        (dev, _requirements(extras["dev"])),
    ]
    for pins, requirements in checks:
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement} is not in the lock: run bash scripts/upgrade-deps"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{name}=={pins[name]} !~ {requirement}"
            )


def test_the_producer_lock_holds_none_of_the_aggregators_dependencies() -> None:
    """requirements/producer.txt (a producer-only install) has the producers' packages and not one package that
    only the aggregator extra brings."""
    producer, runtime = _pins("producer.txt"), _pins("runtime.txt")
    assert {"aio-pika", "msgspec"} <= set(producer)
    extra = {canonicalize_name(requirement.name) for requirement in _requirements(
        _pyproject()["project"]["optional-dependencies"]["aggregator"]  # type: ignore[index]
    )}  # fmt: skip
    assert extra & set(producer) == set()
    assert {"aiohttp", "prometheus-client", "typer", "rich", "pydantic"} & set(producer) == set()
    assert {name: runtime[name] for name in producer} == producer  # the same versions the aggregator runs with


def test_the_dev_lock_agrees_with_the_runtime_and_build_locks() -> None:
    """The suite tests the versions a user runs: dev.txt pins each runtime, producer and build package alike."""
    dev = _pins("dev.txt")
    for lock in ("runtime.txt", "producer.txt", "build.txt"):
        for name, version in _pins(lock).items():
            assert dev.get(name) == version, f"{name}: {lock} pins {version}, dev.txt {dev.get(name)}"


def test_this_environment_is_the_locked_one() -> None:
    """scripts/install installed exactly what requirements/dev.txt pins (the suite runs in it)."""
    wrong = {}
    for name, version in _pins("dev.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}, "installed packages differ from the lock (pinned, installed)"


def test_the_image_and_the_install_script_install_from_the_lock_with_hashes() -> None:
    """The Dockerfile's stages and scripts/install pip-install the lock files in hash-checking mode."""
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run and "-r " in run]
    assert any("requirements/build.txt" in run for run in installs)
    assert any("/tmp/requirements.txt" in run for run in installs)
    assert all("--require-hashes" in run for run in installs)
    copied = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "COPY"]
    assert any(arguments.startswith("requirements/runtime.txt ") for arguments in copied)
    install = (ROOT / "scripts" / "install").read_text()
    assert "--require-hashes" in install
    assert "requirements/runtime.txt" in install
    assert "requirements/dev.txt" in install


def test_pre_commit_runs_the_locked_ruff_and_mypy() -> None:
    """.pre-commit-config.yaml is valid and its hooks are the lock's ruff and mypy, as CI runs them."""
    import subprocess

    import yaml

    config = ROOT / ".pre-commit-config.yaml"
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "pre-commit"), "validate-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    entries = [hook["entry"] for repo in yaml.safe_load(config.read_text())["repos"] for hook in repo["hooks"]]
    assert entries == [
        ".venv/bin/ruff check --force-exclude",
        ".venv/bin/ruff format --check --force-exclude",
        ".venv/bin/mypy",
    ]
