"""What a user of the command line expects besides the commands: --version, and shell completion that completes."""

import os
import subprocess
import sys
from pathlib import Path

from aggregator.version import build_info, version

BIN = Path(sys.executable).parent


def _aggregator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "aggregator"), *args], capture_output=True, text=True, timeout=60, check=False,
                          env=env)  # fmt: skip


def test_version_prints_the_distribution_version_the_revision_and_python() -> None:
    """`aggregator --version` says the version pyproject.toml declares, the git revision of this checkout, Python."""
    import tomllib

    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    result = _aggregator("--version")
    assert result.returncode == 0, result.stderr
    assert version() == declared["version"]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"tickbus {declared['version']} (revision {head.stdout.strip()}, Python " \
        f"{sys.version.split()[0]})"  # fmt: skip
    pinned = _aggregator("--version", env={**os.environ, "TICKBUS_REVISION": "abc123"})
    assert "(revision abc123," in pinned.stdout
    assert build_info().version == declared["version"]


def test_bash_completion_completes_commands_and_subcommands() -> None:
    """The script `--show-completion bash` prints, loaded into bash, completes `check` and `dlq re` as typed."""
    script = (
        'eval "$(aggregator --show-completion bash)"\n'
        "complete -p aggregator >/dev/null\n"
        'COMP_WORDS=(aggregator check); COMP_CWORD=1; _aggregator_completion aggregator; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(aggregator dlq re); COMP_CWORD=2; _aggregator_completion aggregator; echo "${COMPREPLY[*]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["check-config", "replay"]
