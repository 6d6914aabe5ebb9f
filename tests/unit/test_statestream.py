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


def test_after_the_stream_was_deleted_the_next_commit_writes_every_series_and_a_takeover_starts_from_it() -> None:
    """An operator deleted the stream: the broker returned the commit (no queue). The next commit declares the
    stream again and writes every series in one full record, so a takeover from the new stream alone has every
    count, and the sequence numbers it starts from need no earlier commit."""
    broker = Broker()
    active, ingest = _replica(broker)

    async def declare(channel: object) -> None:
        return None

    async def channel() -> object:
        return object()

    active.declare = declare  # type: ignore[method-assign]
    active.bind(channel)  # type: ignore[arg-type]
    _errors(ingest, 5, "a")
    _commit(active)
    _commit(active)
    recreated = Broker()
    active._send = recreated.send  # type: ignore[method-assign]
    active._lost = True  # what _send sets when the broker returns a record
    _errors(ingest, 1, "b")
    _commit(active)
    assert not active._lost
    _errors(ingest, 1, "c")
    _commit(active)
    standby, restored = _replica(Broker())
    assert standby._rebuild(recreated.sent) == 2
    assert _total(restored) == 7
    standby, restored = _replica(Broker())
    standby._rebuild(broker.sent + recreated.sent)
    assert _total(restored) == 7, "the full record stands in for everything before it"


class _SilentQueue:
    """A stream queue that delivers nothing, as a stalled read does."""

    async def consume(self, callback: Any, arguments: dict[str, Any]) -> str:
        return "tag"

    async def cancel(self, tag: str) -> None:
        return None


class _SilentChannel:
    """A channel on which the stream read starts and nothing arrives."""

    async def set_qos(self, prefetch_count: int) -> None:
        return None

    async def get_queue(self, name: str, ensure: bool) -> _SilentQueue:
        return _SilentQueue()

    async def close(self) -> None:
        return None


def test_a_takeover_whose_stream_read_stalls_reads_once_more_then_refuses_clearly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker delivers nothing of the stream after the fence went out: the takeover must not wait forever
    without a word. It reads again on a new channel once, then fails with an error naming the stream."""
    broker = Broker()
    standby, _ = _replica(broker)
    channels: list[_SilentChannel] = []

    async def open_channel() -> _SilentChannel:
        channels.append(_SilentChannel())
        return channels[-1]

    standby._open_channel = open_channel  # type: ignore[assignment]
    standby.read_stall_seconds = 0.05
    with pytest.raises(CheckpointError, match=r"reading the state stream 'q\.state' stalled twice"):
        anyio.run(standby.take_over)
    assert len(channels) == 2
    assert "stalled; reading it again" in caplog.text
    assert [headers[statestream.HEADER_KIND] for headers, _ in broker.sent] == ["fence"]
