"""The aggregator as a subprocess started through its CLI, on its own exchange, queue and port."""

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.scrape import Samples, scrape, wait_for
from tests.support.web import WebClient

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Names:
    """Exchange and queue names of one test, so tests never share broker state."""

    exchange: str
    queue: str

    @classmethod
    def unique(cls, prefix: str = "test") -> "Names":
        token = uuid.uuid4().hex[:10]
        return cls(exchange=f"{prefix}.{token}.x", queue=f"{prefix}.{token}.q")

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dead"


@dataclass
class AggregatorProcess:
    """`aggregator run` in a subprocess, its log in a file."""

    names: Names
    workdir: Path
    config: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    amqp_url: str = AMQP_URL
    # How to reach an aggregator started with a web config (TLS, basic auth); None: plain HTTP.
    web: WebClient | None = None
    # False: no coverage measurement in the subprocess (the tests marked `volume`).
    measured: bool = True

    @property
    def url(self) -> str:
        return f"{'https' if self.web else 'http'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"aggregator-{self.port}.log"

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "aggregator", "run",
            "--amqp-url", self.amqp_url,
            "--exchange", self.names.exchange,
            "--queue", self.names.queue,
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]  # fmt: skip
        if self.config is not None:
            command += ["--config", str(self.config)]
        return command + self.extra_args

    def start(self, wait_ready: bool = True) -> "AggregatorProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKBUS_")}
        if not self.measured:
            env = {k: v for k, v in env.items() if not k.startswith("COVERAGE_PROCESS_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()
        return self

    def ready(self) -> bool:
        context = self.web.context() if self.web else None
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2, context=context) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        def probe() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"aggregator exited with {self.process.returncode}:\n{self.log()}")
            return self.ready()

        wait_for(probe, timeout, what="the aggregator to be ready")

    def scrape(self) -> Samples:
        if self.web is None:
            return scrape(f"{self.url}/metrics")
        return scrape(f"{self.url}/metrics", self.web.context(), self.web.headers())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        return code
