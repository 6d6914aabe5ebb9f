"""A producer-only install in a fresh venv: emits to the real broker without the aggregator's packages."""

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scrape import total, wait_for

ROOT = Path(__file__).resolve().parents[2]
StartAggregator = Callable[..., AggregatorProcess]
# Installed by the aggregator extra only: none may be in a producer-only environment.
AGGREGATOR_ONLY = {"aiohttp", "anyio", "bcrypt", "prometheus-client", "rich", "typer", "pydantic"}


def _run(
    *command: str | Path, env: dict[str, str] | None = None, cwd: Path = Path("/")
) -> subprocess.CompletedProcess[str]:
    """Run from outside the checkout, so `python -c` imports the installed packages, not the sources."""
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, check=False,
                          env=env, cwd=cwd)  # fmt: skip


def test_a_producer_only_install_emits_without_the_aggregators_dependencies(
    names: Names, start_aggregator: StartAggregator, tmp_path: Path
) -> None:
    """The wheel with requirements/producer.txt in a new venv: `pip check` passes, none of aiohttp,
    prometheus-client, typer (...) is installed, `producers` and `schemas` import and emit events the aggregator
    counts, the packages are typed (py.typed), the licence ships, and `aggregator` says which extra it needs."""
    aggregator = start_aggregator(names)
    pip_env = {**os.environ, "PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheels = tmp_path / "wheels"
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, ROOT,
                 env=pip_env)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("tickbus-*.whl")
    venv = tmp_path / "producer-venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    locked = _run(python, "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps",
                  "--requirement", ROOT / "requirements" / "producer.txt", env=pip_env)  # fmt: skip
    assert locked.returncode == 0, locked.stderr
    installed = _run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel, env=pip_env)
    assert installed.returncode == 0, installed.stderr
    checked = _run(python, "-m", "pip", "check", env=pip_env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = _run(python, "-m", "pip", "list", "--format=json", env=pip_env)
    packages = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert {"tickbus", "aio-pika", "msgspec"} <= packages
    assert packages & AGGREGATOR_ONLY == set()

    source = f"producer-only-{uuid.uuid4().hex[:6]}"
    script = textwrap.dedent(
        f"""
        import importlib.util, time
        from producers import Emitter, EmitterSettings
        from schemas import Signal
        for module in ("aiohttp", "prometheus_client", "typer"):
            assert importlib.util.find_spec(module) is None, module
        emitter = Emitter(EmitterSettings(source={source!r}, url={AMQP_URL!r}, exchange={names.exchange!r}))
        for _ in range(5):
            emitter.emit(Signal(ts=time.time(), source={source!r}, strategy="s", symbol="BTCUSDT", side="buy",
                                outcome="accepted"))
        assert emitter.flush(30)
        emitter.close()
        print("emitted")
        """
    )
    emitted = _run(python, "-c", script)
    assert emitted.returncode == 0, emitted.stderr
    assert emitted.stdout.strip() == "emitted"
    wait_for(lambda: total(aggregator.scrape(), "trading_signals_total", source=source) == 5, what="the 5 signals")

    located = _run(python, "-c", "import producers, pathlib; print(pathlib.Path(producers.__file__).parent.parent)")
    site = Path(located.stdout.strip())
    assert site.is_relative_to(venv), site
    for package in ("producers", "schemas", "aggregator"):
        assert (site / package / "py.typed").exists(), package
    assert (site / "aggregator" / "static" / "status.html").exists()  # the status page ships in the wheel
    (dist_info,) = site.glob("tickbus-*.dist-info")
    assert "Apache License" in (dist_info / "licenses" / "LICENSE").read_text()

    launcher = _run(venv / "bin" / "aggregator", "--version")
    assert launcher.returncode == 2
    assert "producer-only install" in launcher.stderr
    assert "pip install 'tickbus[aggregator]'" in launcher.stderr
    assert "Traceback" not in launcher.stderr
