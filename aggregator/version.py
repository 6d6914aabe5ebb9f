"""The aggregator's version and build: the installed distribution's version, the source revision and Python."""

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "tickbus"
# Set by the image (the Dockerfile's TICKBUS_REVISION build argument) or by whoever packages tickbus.
REVISION_VARIABLE = "TICKBUS_REVISION"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildInfo:
    """What `aggregator --version` prints and `tickbus_build_info` carries as labels."""

    version: str
    revision: str
    python: str

    def line(self) -> str:
        return f"tickbus {self.version} (revision {self.revision}, Python {self.python})"


def version() -> str:
    """The version of the installed `tickbus` distribution: pyproject.toml's is the only literal."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def revision() -> str:
    """$TICKBUS_REVISION if set; else the commit of the git checkout this code runs from; else `unknown`."""
    configured = os.environ.get(REVISION_VARIABLE, "").strip()
    if configured:
        return configured
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        return UNKNOWN
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else UNKNOWN


def build_info() -> BuildInfo:
    return BuildInfo(version(), revision(), platform.python_version())
