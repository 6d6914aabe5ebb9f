"""Fixtures shared by unit and integration tests; integration tests are marked by their folder."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import delete_topology
from tests.support.process import AMQP_URL, AggregatorProcess, Names

pytest_plugins = ("tests.support.rabbitnodes", "tests.support.secured")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def names() -> Iterator[Names]:
    """Exchange and queue names no other test uses; what the test declared under them is deleted after it."""
    unique = Names.unique()
    yield unique
    delete_topology(unique)


@pytest.fixture
def start_aggregator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., AggregatorProcess]]:
    """Start `aggregator run` subprocesses (on the shared broker unless `amqp_url` says otherwise); every one still
    running is stopped at the end. In a test marked `volume` they run without coverage."""
    started: list[AggregatorProcess] = []
    measured = request.node.get_closest_marker("volume") is None

    def start(
        names: Names,
        config: Path | None = None,
        extra_args: list[str] | None = None,
        wait_ready: bool = True,
        amqp_url: str = AMQP_URL,
    ) -> AggregatorProcess:
        process = AggregatorProcess(names, tmp_path, config, extra_args or [], amqp_url=amqp_url, measured=measured)
        started.append(process)
        return process.start(wait_ready)

    yield start
    for process in started:
        if process.process is not None:
            process.stop()
