"""Label-like values hold only the label charset: a trailing newline is outside it, in both forms of the check."""

import time

import pytest

from aggregator import _fastapply
from schemas.events import Metric, Signal
from schemas.labels import LabelCheck


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize(
    "event",
    [
        Signal(ts=time.time(), source="s1\n", strategy="a", symbol="X", side="buy"),
        Signal(ts=time.time(), source="s1", strategy="a\n", symbol="X", side="buy"),
        Metric(ts=time.time(), source="s1", name="m_total", value=1.0, labels={"desk": "fx\n"}),
    ],
    ids=["source", "strategy", "custom-label"],
)
def test_a_value_ending_in_a_newline_is_outside_the_label_charset(compiled: bool, event: Signal | Metric) -> None:
    """`^...$` in Python also matches before a final newline, so `s1\\n` passed the check of `^[A-Za-z0-9_.:-]+$`
    and became a series (and a source) of its own. The wire format's charset has no newline: it must be refused."""
    check = LabelCheck(check_values=_fastapply.check_values) if compiled else LabelCheck()
    assert check.problem(event) is not None
