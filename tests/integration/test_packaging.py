"""Installing tickbus where there is no C compiler: it installs, and runs the pure-Python loop with a warning."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ISOLATED_PIP = {"PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=cwd, check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_without_a_compiler_tickbus_installs_and_applies_with_the_pure_loop(tmp_path: Path) -> None:
    """CC pointing at a compiler that always fails: the install succeeds, and the aggregator says which loop it runs."""
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.so", "node_modules", "_fastapply.c", "_fastrender.c", "_totals.c", "state"
        ),
    )
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    env = {**os.environ, **ISOLATED_PIP}
    _run(
        [python, "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps",
         "-r", str(ROOT / "requirements" / "runtime.txt"), "-r", str(ROOT / "requirements" / "build.txt")],
        env,
    )  # fmt: skip
    output = _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", str(source)],
        {**env, "CC": "false", "PYTHONWARNINGS": ""},
    )
    assert "Successfully installed tickbus" in output
    check = (
        "from aggregator.compiler import compiled_loop; "
        "from aggregator.accelerated import compiled_render, counter_totals; "
        "print(compiled_loop(), compiled_render(), type(counter_totals()).__name__)"
    )
    # Run outside the checkout, so that only the installed package can be imported.
    assert _run([python, "-c", check], cwd=tmp_path).strip() == "None None dict"
    aggregator = subprocess.Popen(
        [str(venv / "bin" / "aggregator"), "run", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        time.sleep(3)
    finally:
        aggregator.terminate()
        log, _ = aggregator.communicate(timeout=30)
    assert "the compiled apply loop is not built" in log
    assert "pure-Python loop" in log
    assert "renders /metrics in Python" in log
