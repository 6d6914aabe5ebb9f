"""The state stream's records after a commit the broker did not confirm: a later takeover still loads them."""

from typing import Any

import anyio
import pytest

from aggregator.checkpoint import CheckpointError
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.statestream import CommitFailed, StreamCheckpointer
from schemas.events import Error
from tests.support.engine import make_ingest

Sent = list[tuple[dict[str, Any], bytes]]


def _replica(sent: Sent, refuse_first: int = 0) -> tuple[StreamCheckpointer, Ingest]:
    """A replica whose stream is a list (what the broker confirmed, in order); its first `refuse_first` publishes
    are not confirmed, as when the broker's memory alarm blocks publishers past the 30 s confirm timeout."""
    ingest = make_ingest()
    replica = StreamCheckpointer("q.state", ingest.store, RecentIds(100), ingest.self_metrics)
    refusals = [refuse_first]

    async def send(body: bytes, headers: dict[str, Any]) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise CommitFailed("the state stream 'q.state' did not confirm a record: timeout")
        sent.append((headers, body))

    replica._send = send  # type: ignore[method-assign]
    return replica, ingest


def _error(ingest: Ingest) -> None:
    ingest.apply([Error(ts=1.0, source="s", component="c", error_type="t")], now=1.0)


def _errors_total(ingest: Ingest) -> float:
    return float(sum(ingest.store.families["trading_errors_total"].series.values()))


def test_a_commit_that_was_not_confirmed_leaves_no_gap_a_takeover_refuses(caplog: pytest.LogCaptureFixture) -> None:
    """The first commit is not confirmed (nothing acked, its series stay dirty); the second is, and acks both
    events. A standby taking over must load the stream (2 events), not refuse it as 'lacking commits 1 to 1'
    (retention dropped nothing) and tell the operator to delete the stream."""
    sent: Sent = []
    active, ingest = _replica(sent, refuse_first=1)
    _error(ingest)
    with pytest.raises(CommitFailed):
        anyio.run(active.persist, active.capture())
    _error(ingest)
    anyio.run(active.persist, active.capture())
    standby, standby_ingest = _replica([])
    try:
        standby._rebuild(sent)
    except CheckpointError as error:
        pytest.fail(f"the takeover refused a complete stream: {error}")
    assert _errors_total(standby_ingest) == 2
