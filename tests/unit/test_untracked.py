"""The store's keys and the containers of keys and rows a commit holds stay out of the cyclic collector's walks."""

import gc
import time
from pathlib import Path

import msgspec

from aggregator import _fastapply
from aggregator.checkpoint import Checkpointer
from aggregator.decode import MessageDecoder
from aggregator.dedup import RecentIds
from aggregator.store import Store
from benchmarks.harness import mixed_events
from schemas.labels import LabelCheck
from tests.support.engine import make_ingest


def test_a_new_series_key_of_label_text_is_untracked_and_any_other_stays_tracked() -> None:
    """A key of strings can never be part of a cycle, so it is built untracked; a tuple holding anything else
    (never a key the apply loop builds) keeps the collector's watch."""
    text = _fastapply.share_key([{}, None], ("a" + str(1), "b" + str(2)), 10)
    other = _fastapply.share_key([{}, None], ("a" + str(1), [1.0]), 10)  # type: ignore[arg-type]
    assert not gc.is_tracked(text)
    assert gc.is_tracked(other)


def test_the_apply_loop_stores_untracked_keys_and_a_commit_holds_untracked_containers(tmp_path: Path) -> None:
    """After a message of the desk's mix: every stored key is untracked, each family's set of changed keys too, and
    a commit's chunks (keys and rows, while ingestion adds more) are untracked lists."""
    ingest = make_ingest(compiled=True)
    ingest.apply(mixed_events(5_000), time.time())
    store: Store = ingest.store
    keys = [key for family in store.families.values() for key in family.series if key]
    assert keys
    assert not any(gc.is_tracked(key) for key in keys)
    assert not any(gc.is_tracked(family.dirty) for family in store.families.values())

    checkpointer = Checkpointer(tmp_path, store, RecentIds(10), ingest.self_metrics)
    commit = checkpointer.capture()
    ingest.apply(mixed_events(100), time.time())
    chunks = commit.chunks()
    assert chunks
    assert not any(gc.is_tracked(chunk.keys) or gc.is_tracked(chunk.rows) for chunk in chunks)
    assert not any(gc.is_tracked(family.dirty) for family in store.families.values())
    base = store.chunks()
    assert not any(gc.is_tracked(chunk.keys) or gc.is_tracked(chunk.rows) for chunk in base)


def test_the_label_check_remembers_what_it_found_valid_in_untracked_sets() -> None:
    """The decoder leaves the label check's sets of valid combinations and values (up to 100,000 per kind, every
    one of them strings) out of the collector's walks; they fill as messages are checked."""
    check = LabelCheck(check_values=_fastapply.check_values, first_bad_event=_fastapply.first_bad_event)
    decoder = MessageDecoder(check)
    decoded = decoder.decode(msgspec.msgpack.encode(mixed_events(2_000)), "application/msgpack")
    assert decoded.events
    remembered = check.remembered()
    assert sum(map(len, remembered)) > 100
    assert not any(gc.is_tracked(container) for container in remembered)


def test_untracking_an_object_the_collector_never_tracks_changes_nothing() -> None:
    """`untrack` clears the collector's header only on types that have one: numbers, text and bytes pass through
    unharmed, and a list is untracked."""
    values: list[object] = [1.5, "text" + str(1), 10**30, b"bytes"]
    for value in values:
        _fastapply.untrack(value)
    assert values == [1.5, "text1", 10**30, b"bytes"]
    container = [1.0]
    assert gc.is_tracked(container)
    _fastapply.untrack(container)
    assert not gc.is_tracked(container)
