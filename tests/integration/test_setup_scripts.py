"""The set-up scripts wait for another installer's package lock instead of failing."""

import contextlib
import fcntl
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DPKG_LOCK = Path("/var/lib/dpkg/lock-frontend")
HELD_SECONDS = 3.0


@pytest.fixture
def held_dpkg_lock() -> Iterator[threading.Timer]:
    """The dpkg front-end lock, held as apt holds it (a POSIX record lock) and released after a few seconds."""
    assert shutil.which("apt-get") is not None, "this machine installs with apt-get"
    assert DPKG_LOCK.exists()
    assert os.geteuid() == 0, "taking the dpkg lock needs root, as the install scripts do"
    descriptor = os.open(DPKG_LOCK, os.O_RDWR)
    fcntl.lockf(descriptor, fcntl.LOCK_EX)
    release = threading.Timer(HELD_SECONDS, os.close, (descriptor,))
    yield release
    release.cancel()
    with contextlib.suppress(OSError):
        os.close(descriptor)


def test_apt_install_waits_for_the_package_lock(held_dpkg_lock: threading.Timer) -> None:
    """apt-get alone fails at once while another installer holds the lock; the scripts' apt_get waits and succeeds."""
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "hostname"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode != 0
    assert "lock" in plain.stderr
    held_dpkg_lock.start()
    started = time.monotonic()
    waited = subprocess.run(
        ["bash", "-c", f". {ROOT / 'scripts' / 'lib.sh'}; apt_get {' '.join(command[1:])}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert waited.returncode == 0, waited.stderr
    assert time.monotonic() - started >= HELD_SECONDS * 0.9
