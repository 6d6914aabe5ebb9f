"""Label-like values hold only the label charset: a trailing newline is outside it, in every form of the check."""

import re
import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import _fastapply
from schemas.events import Metric, Signal
from schemas.labels import _LABEL, _METRIC_NAME, _NAME, LabelCheck, charset_table

LABEL_CHARS = string.ascii_letters + string.digits + '_.:/+=@{}<> -\n\t|"\\'


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


@settings(max_examples=500, deadline=None)
@given(value=st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.text(alphabet=LABEL_CHARS, max_size=8))
def test_the_compiled_charset_tables_accept_exactly_what_the_patterns_accept(value: str) -> None:
    """Each label pattern read as a table of ASCII characters: the same verdict as the regular expression."""
    for pattern in (_LABEL, _NAME):
        table = charset_table(pattern)
        assert table is not None
        verdict = _fastapply.check_values(set(), ({},), (table,), (value,), 10) < 0
        assert verdict == (pattern.fullmatch(value) is not None), (pattern.pattern, value)


def test_only_a_pattern_of_one_character_class_becomes_a_table() -> None:
    """Other patterns (a metric name's first character differs) keep their regular expression."""
    assert charset_table(_METRIC_NAME) is None
    assert charset_table(re.compile(r"^[a-z]+$", re.IGNORECASE)) is None
    assert charset_table(re.compile(r"^[a-z]+x$")) is None
    for beyond_ascii in (r"^[\w.-]*$", r"^[^\n]*$", r"^[\s]+$", r"^[a-z\u00e9]*$", r"^[a]b]*$"):
        assert charset_table(re.compile(beyond_ascii)) is None, beyond_ascii
