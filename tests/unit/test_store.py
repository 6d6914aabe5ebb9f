"""The series store: counters, gauges by event time, histograms, the cardinality guard, expiry and snapshots."""

from aggregator.store import OVERFLOW_VALUE, CounterFamily, Family, GaugeFamily, HistogramFamily, Store


def test_counter_adds_and_folds_past_the_series_limit_keeping_the_total_exact() -> None:
    """Past max_series, new label sets land in one overflow series; the sum over all series stays exact."""
    overflowed: list[str] = []
    counter = CounterFamily("c_total", "h", ["symbol"], max_series=3, on_overflow=lambda f: overflowed.append(f.name))
    for index in range(10):
        counter.inc((f"S{index}",), 2.0)
    counter.inc(("S0",), 1.0)
    assert len(counter.series) == 4
    assert counter.series[(OVERFLOW_VALUE,)] == 14.0
    assert counter.series[("S0",)] == 3.0
    assert sum(counter.series.values()) == 21.0
    assert overflowed == ["c_total"] * 7


def test_running_total_adds_increases_and_survives_a_producer_restart() -> None:
    """A producer's cumulative count becomes increases; a new instance starts from zero."""
    counter = CounterFamily("dropped_total", "h", ["source"])
    counter.add_running_total(("p",), "a", 5)
    counter.add_running_total(("p",), "a", 5)
    counter.add_running_total(("p",), "a", 8)
    counter.add_running_total(("p",), "b", 2)
    assert counter.series[("p",)] == 10.0


def test_interleaved_reports_of_two_instances_add_only_their_own_increases() -> None:
    """Two live producers of one source, reporting alternately, are not counted again at every switch."""
    counter = CounterFamily("dropped_total", "h", ["source"])
    for total_a, total_b in ((5, 0), (5, 0), (5, 1), (7, 1)):
        counter.add_running_total(("p",), "a", total_a)
        counter.add_running_total(("p",), "b", total_b)
    assert counter.series[("p",)] == 8.0


def test_gauge_keeps_the_value_of_the_newest_event() -> None:
    """An older event arriving late never overwrites a newer value."""
    gauge = GaugeFamily("g", "h", ["symbol"])
    gauge.set(("X",), 5.0, event_ts=100.0, now=1.0)
    gauge.set(("X",), 7.0, event_ts=99.0, now=2.0)
    assert gauge.series[("X",)] == (5.0, 100.0)
    gauge.set(("X",), 9.0, event_ts=101.0, now=3.0)
    assert gauge.series[("X",)] == (9.0, 101.0)


def test_exclusive_gauge_replaces_the_old_label_set() -> None:
    """An info-style gauge keeps one series per source: a new version replaces the old one."""
    info = GaugeFamily("info", "h", ["source", "version"], exclusive_prefix=1)
    info.set(("a", "1.0"), 1.0, 10.0, 10.0)
    info.set(("b", "1.0"), 1.0, 10.0, 10.0)
    info.set(("a", "2.0"), 1.0, 11.0, 11.0)
    info.set(("a", "0.9"), 1.0, 9.0, 12.0)
    assert set(info.series) == {("a", "2.0"), ("b", "1.0")}


def test_gauges_expire_but_counters_do_not() -> None:
    """Gauges not set since the cut-off go away; counters are never dropped."""
    store = Store()
    gauge = store.add(GaugeFamily("g", "h", ["s"]))
    counter = store.add(CounterFamily("c_total", "h", ["s"]))
    assert isinstance(gauge, GaugeFamily)
    assert isinstance(counter, CounterFamily)
    gauge.set(("old",), 1.0, 1.0, now=100.0)
    gauge.set(("new",), 1.0, 1.0, now=200.0)
    counter.inc(("old",))
    assert store.expire_gauges(now=250.0, default_ttl=100.0, source_activity={}) == 1
    assert set(gauge.series) == {("new",)}
    assert counter.series == {("old",): 1.0}


def test_histogram_buckets_are_upper_inclusive() -> None:
    """A value equal to a bound counts in that bound's bucket; above the last bound goes to +Inf."""
    histogram = HistogramFamily("h_seconds", "h", [], buckets=[0.1, 1.0])
    for sample in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe((), sample)
    assert histogram.series[()].tolist() == [2, 2, 1, 4.65]


def test_snapshot_round_trips_every_family_type() -> None:
    """A restored store holds exactly what was snapshotted."""

    def build() -> tuple[Store, list[Family]]:
        store = Store()
        families: list[Family] = [
            store.add(CounterFamily("c_total", "h", ["a"])),
            store.add(GaugeFamily("g", "h", ["a"])),
            store.add(HistogramFamily("h", "h", ["a"], buckets=[1.0])),
        ]
        return store, families

    store, (counter, gauge, histogram) = build()
    assert isinstance(counter, CounterFamily)
    assert isinstance(gauge, GaugeFamily)
    assert isinstance(histogram, HistogramFamily)
    counter.inc(("x",), 3)
    counter.add_running_total(("y",), "i", 4)
    gauge.set(("x",), 2.5, 10.0, 11.0)
    histogram.observe(("x",), 0.5)
    restored, _ = build()
    restored.restore(store.chunks())
    assert restored.snapshot() == store.snapshot()


def test_a_changed_declaration_drops_the_old_series_instead_of_breaking_the_scrape() -> None:
    """Restoring series with other labels, or of another type, keeps the rest and serves nothing malformed."""
    old = Store()
    old_counter = old.add(CounterFamily("c_total", "h", ["source", "reason"]))
    old_hist = old.add(HistogramFamily("lat_seconds", "h", ["source"], buckets=[1.0]))
    kept = old.add(CounterFamily("kept_total", "h", ["source"]))
    assert isinstance(old_counter, CounterFamily)
    assert isinstance(old_hist, HistogramFamily)
    assert isinstance(kept, CounterFamily)
    old_counter.inc(("a", "x"))
    old_hist.observe(("a",), 0.5)
    kept.inc(("a",), 2)
    new = Store()
    new.add(CounterFamily("c_total", "h", ["source", "reason", "desk"]))
    new.add(GaugeFamily("lat_seconds", "h", ["source"]))
    new.add(CounterFamily("kept_total", "h", ["source"]))
    new.restore(old.chunks())
    assert new.families["c_total"].series == {}
    assert new.families["lat_seconds"].series == {}
    assert new.families["kept_total"].series == {("a",): 2.0}
