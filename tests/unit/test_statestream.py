"""The state stream's records and bases in parts: what a takeover rebuilds from the messages a replica sent."""

from pathlib import Path
from typing import Any

import anyio
import pytest

from aggregator import statestream
from aggregator.checkpoint import CheckpointError
from aggregator.config import CatalogSettings
from aggregator.dedup import RecentIds
from aggregator.ingest import Ingest
from aggregator.statestream import StreamCheckpointer
from schemas.events import Error
from tests.support.engine import make_ingest

Sent = list[tuple[dict[str, Any], bytes]]


class Broker:
    """The stream as a list; `fail_at` makes the n-th publish (0-based) go unconfirmed."""

    def __init__(self) -> None:
        self.sent: Sent = []
        self.fail_at: int | None = None
        self.published = 0

    async def send(self, body: bytes, headers: dict[str, Any]) -> None:
        number, self.published = self.published, self.published + 1
        if number == self.fail_at:
            raise statestream.CommitFailed("not confirmed")
        self.sent.append((headers, body))


def _replica(broker: Broker) -> tuple[StreamCheckpointer, Ingest]:
    ingest = make_ingest(CatalogSettings(max_series_per_metric=1_000_000))
    stream = StreamCheckpointer(
        "q.state", ingest.store, RecentIds(1000), ingest.self_metrics, compact_after_bytes=10**12
    )
    stream._send = broker.send  # type: ignore[method-assign]
    return stream, ingest


def _errors(ingest: Ingest, count: int, tag: str) -> None:
    ingest.apply([Error(ts=1.0, source=f"{tag}-{index}", component="c", error_type="t") for index in range(count)], 1.0)


def _commit(stream: StreamCheckpointer) -> None:
    anyio.run(stream.persist, stream.capture())


def _total(ingest: Ingest) -> float:
    return float(sum(ingest.store.families["trading_errors_total"].series.values()))


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statestream, "PART_BYTES", 4096)


def test_a_record_larger_than_a_message_goes_in_parts_and_comes_back_whole(small_parts: None) -> None:
    """A commit of 2,000 new series is far over one part: it is sent in parts, each within the part size, and a
    takeover joins them into the record."""
    broker = Broker()
    active, ingest = _replica(broker)
    _errors(ingest, 2000, "a")
    _commit(active)
    assert len(broker.sent) > 1
    assert all(len(body) <= 4096 for _, body in broker.sent)
    standby, restored = _replica(Broker())
    assert standby._rebuild(broker.sent) == 1
    assert _total(restored) == 2000


def test_a_record_missing_parts_is_left_out_and_the_next_commit_takes_its_place(
    small_parts: None, tmp_path: Path
) -> None:
    """The broker does not confirm the third part of a commit: the commit fails, nothing it covers is acked, its
    series stay for the next commit, which takes its sequence number. A takeover leaves the torn record out and
    still finds the commits without a gap."""
    broker = Broker()
    active, ingest = _replica(broker)
    _errors(ingest, 2000, "a")
    broker.fail_at = 2
    with pytest.raises(OSError, match="not confirmed"):
        _commit(active)
    _errors(ingest, 10, "b")
    _commit(active)
    standby, restored = _replica(Broker())
    try:
        standby._rebuild(broker.sent)
    except CheckpointError as error:
        pytest.fail(f"a failed commit left a gap in the sequence: {error}")
    assert _total(restored) == 2010
    assert standby.sequence == 1
