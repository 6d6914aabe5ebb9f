"""Driving a producer in another language through its scripted driver: JSON commands in, JSON replies out."""

import json
import os
import selectors
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ProducerDriver:
    """A producer subprocess (producers/node/testing/driver.js, producers/go/cmd/tickbus-driver) on a pipe."""

    def __init__(self, command: list[str], stderr_path: Path, cwd: Path = ROOT) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={k: v for k, v in os.environ.items() if not k.startswith("TICKBUS_")},
            )
        self._buffer = b""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send(self, op: str, timeout: float = 30.0, **arguments: Any) -> dict[str, Any]:
        """Send one command and wait for its reply."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = json.loads(self._read_line(timeout))
        assert reply.get("op") == op, reply
        return reply

    def _read_line(self, timeout: float) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise AssertionError(f"no reply from the producer within {timeout}s; stderr:\n{self.stderr()}")
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    code = self.process.wait(5)
                    raise AssertionError(f"the producer exited with {code}; stderr:\n{self.stderr()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
