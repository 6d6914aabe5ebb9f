"""Sharded aggregators for tests: replicas of one exchange on their own queues, sources emitting to them, and
where each source's series ended up."""

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from producers.emitter import Emitter, EmitterSettings
from schemas.events import Error, Position
from tests.support.process import AggregatorProcess, Names
from tests.support.scrape import Samples

COUNTER = "trading_errors_total"
GAUGE = "trading_position_quantity"


def shard_config(directory: Path, name: str, extra: str = "", weight: int = 1) -> Path:
    """A config file of one replica: [shard] on with `weight`, and whatever `extra` TOML adds."""
    path = directory / f"{name}.toml"
    path.write_text(f"{extra}\n[shard]\nenabled = true\nweight = {weight}\n", encoding="utf-8")
    return path


def replica_names(exchange: str, queue: str) -> Names:
    return Names(exchange=exchange, queue=queue)


def by_source(samples: Iterable[Samples], name: str) -> dict[str, dict[int, float]]:
    """source -> {replica index: value of `name` summed over that source's series there}."""
    found: dict[str, dict[int, float]] = {}
    for index, scraped in enumerate(samples):
        for (metric, labels), value in scraped.items():
            if metric != name:
                continue
            source = dict(labels)["source"]
            found.setdefault(source, {})
            found[source][index] = found[source].get(index, 0.0) + value
    return found


def scrape_all(replicas: list[AggregatorProcess]) -> list[Samples]:
    return [replica.scrape() for replica in replicas]


@dataclass
class SourceStream:
    """Sources each publishing `events` errors through its own Python emitter, with a position gauge every
    `gauge_every` events (quantity = events sent so far), spread over about `seconds`, in background threads."""

    url: str
    exchange: str
    sources: list[str]
    events: int
    seconds: float = 0.0
    gauge_every: int = 100
    heartbeat_interval: float = 1.0
    password_file: str = ""
    threads: list[threading.Thread] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "SourceStream":
        for source in self.sources:
            thread = threading.Thread(target=self._produce, args=(source,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _produce(self, source: str) -> None:
        settings = EmitterSettings(
            source=source, url=self.url, exchange=self.exchange, batch_size=50,
            heartbeat_interval=self.heartbeat_interval, password_file=self.password_file,
        )  # fmt: skip
        pause = self.seconds / max(1, self.events // self.gauge_every)
        with Emitter(settings) as emitter:
            for index in range(1, self.events + 1):
                event = Error(ts=time.time(), source=source, component="shards", error_type=f"e{index % 3}")
                while not emitter.emit(event):
                    time.sleep(0.01)
                if index % self.gauge_every == 0:
                    emitter.emit(Position(ts=time.time(), source=source, symbol="SHD", quantity=float(index)))
                    if pause:
                        time.sleep(pause)
            if not emitter.flush(120):
                self.failures.append(f"{source}: not every event was confirmed")

    def join(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread for thread in self.threads if thread.is_alive()]
        assert not alive, f"{len(alive)} source(s) still publishing after {timeout:g}s"
        assert not self.failures, self.failures


def wait_counted(
    replicas: Callable[[], list[AggregatorProcess]], expected: float, timeout: float = 120.0
) -> list[Samples]:
    """Wait until the replicas' COUNTER sums to `expected` (every event applied somewhere); their last scrapes."""
    deadline = time.monotonic() + timeout
    last: list[Samples] = []
    while time.monotonic() < deadline:
        last = scrape_all(replicas())
        counted = sum(value for scraped in last for (name, _), value in scraped.items() if name == COUNTER)
        if counted >= expected:
            return last
        time.sleep(0.3)
    counted = sum(value for scraped in last for (name, _), value in scraped.items() if name == COUNTER)
    raise AssertionError(f"the replicas counted {counted} of {expected} events within {timeout:g}s")
