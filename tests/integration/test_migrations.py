"""Each reference system's scenario, sent through the real broker, gives every row of its migration guide."""

import time
from collections.abc import Callable

import pytest

from producers.emitter import Emitter, EmitterSettings
from tests.support.migrations import (
    SYSTEMS,
    events_by_source,
    expected_samples,
    exposed_names,
    guide_rows,
    load,
    metric_names,
)
from tests.support.process import AMQP_URL, AggregatorProcess, Names
from tests.support.scenario import missing_or_wrong
from tests.support.scrape import total, wait_for

StartAggregator = Callable[..., AggregatorProcess]


@pytest.mark.parametrize("system", SYSTEMS)
def test_scenario_gives_every_guide_row_exactly(system: str, names: Names, start_aggregator: StartAggregator) -> None:
    """One emitter per component publishes the system's scenario; /metrics then shows every expected sample.

    The aggregator runs with the system's migration config; nothing is rejected, every expected sample of
    every row of the guide's table has its hand-computed value, and every metric name the guide's PromQL
    reads is exposed by this very scrape.
    """
    migration = load(system)
    aggregator = start_aggregator(names, config=migration.config)
    now = float(int(time.time()))
    by_source = events_by_source(migration, now)
    for source, events in by_source.items():
        settings = EmitterSettings(source=source, url=AMQP_URL, exchange=names.exchange, heartbeat_interval=0)
        with Emitter(settings) as emitter:
            for event in events:
                assert emitter.emit(event)
            assert emitter.flush(10)
    sent = sum(len(events) for events in by_source.values())

    def all_applied() -> bool:
        samples = aggregator.scrape()
        return total(samples, "tickbus_events_received_total") + total(samples, "tickbus_events_rejected_total") >= sent

    wait_for(all_applied, timeout=20, what=f"the {sent} events of the {system} scenario")
    samples = aggregator.scrape()
    assert total(samples, "tickbus_events_rejected_total") == 0, aggregator.log()
    assert total(samples, "tickbus_events_received_total") == sent
    assert missing_or_wrong(samples, expected_samples(migration, now)) == {}

    exposed = exposed_names(samples)
    unknown = {
        row.metric: sorted(set().union(*(metric_names(query) for query in row.queries)) - exposed)
        for row in guide_rows(system)
    }
    assert {metric: names for metric, names in unknown.items() if names} == {}
