"""The safe charset of label-like strings, checked once per distinct value (and combination of values)."""

import operator
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.events import EVENT_TYPES, EventBase, Metric
from schemas.types import LABEL_PATTERN, METRIC_NAME_PATTERN, NAME_PATTERN, LabelValue, RequiredLabel, SourceName

_LABEL = re.compile(LABEL_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


CheckValues = Callable[
    [set[tuple[str, ...]], tuple[dict[str, str], ...], tuple[bytes | re.Pattern[str], ...], tuple[str, ...], int], int
]
# The compiled check of a message's events: (events, fields by type, capacity, Metric, metric_problem) -> index or -1.
FirstBadEvent = Callable[[list[Any], dict[type[Any], Any], int, type[Any], Callable[[Any], str | None]], int]


# One class of literal ASCII characters and ranges: no escapes (`\w` matches beyond ASCII), no negation.
_ONE_CLASS = re.compile(r"\^\[(?!\^)[ -\[^-~]*\][*+]\$")


def charset_table(pattern: re.Pattern[str]) -> bytes | None:
    """A pattern of one ASCII character class (`^[...]*$`, `^[...]+$`) as a table for the compiled check.

    128 flags, one per ASCII character, and a 129th for the empty string; None for any other pattern.
    """
    if pattern.flags & re.IGNORECASE or not _ONE_CLASS.fullmatch(pattern.pattern):
        return None
    flags = [pattern.fullmatch(chr(code)) is not None for code in range(128)]
    return bytes([*flags, pattern.fullmatch("") is not None])


@dataclass
class _Fields:
    """The label-like fields of one event type, and the combinations and values already found valid."""

    names: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    values_of: Callable[[Any], tuple[str, ...]]
    valid: set[tuple[str, ...]] = field(default_factory=set)
    # Per field, the values already found valid, each mapped to the one copy kept of it: the compiled check
    # puts that copy in the event, so that the store's lookups compare label values by identity.
    seen: tuple[dict[str, str], ...] = ()
    # Per field, what the compiled check matches values against: its charset table, else its pattern.
    matchers: tuple[bytes | re.Pattern[str], ...] = ()

    def __post_init__(self) -> None:
        self.seen = tuple({} for _ in self.names)
        self.matchers = tuple(charset_table(pattern) or pattern for pattern in self.patterns)


def _fields(event_type: type[EventBase]) -> _Fields:
    hints = typing.get_type_hints(event_type, include_extras=True)
    checked = [
        (name, _NAME if hint == SourceName else _LABEL)
        for name, hint in hints.items()
        if hint in (SourceName, LabelValue, RequiredLabel)
    ]
    names = tuple(name for name, _ in checked)
    patterns = tuple(pattern for _, pattern in checked)
    if len(names) == 1:
        single = operator.attrgetter(names[0])
        return _Fields(names, patterns, lambda event: (single(event),))
    return _Fields(names, patterns, operator.attrgetter(*names))


class LabelCheck:
    """Finds label-like values outside their charset; combinations and values seen valid are remembered.

    Events of a kind repeat the same few combinations (source, strategy, symbol...), so after the
    first event of each, the check is one set lookup; a new combination is checked value by value,
    and only a value never seen goes to the regular expression. At most `capacity` combinations and
    values per field are kept per kind: past that, new ones are checked each time rather than
    remembered, so a flood of distinct values can neither grow the memory nor empty what is known.
    """

    def __init__(
        self,
        capacity: int = 100_000,
        check_values: CheckValues | None = None,
        first_bad_event: FirstBadEvent | None = None,
    ) -> None:
        """Remember up to `capacity` valid combinations and values per kind.

        `check_values`, `first_bad_event`: compiled forms of the check of one combination (its position of
        a bad value or -1) and of a message's events (the index of the first bad one or -1). The compiled
        check of a message also replaces each label value it knows by the one copy it keeps (equal text),
        which the store's dict and set lookups then match by identity instead of comparing text.
        """
        self.capacity = capacity
        self._check_values = check_values
        self._first_bad_event = first_bad_event
        self._by_type = {event_type: _fields(event_type) for event_type in EVENT_TYPES}
        self._tables = {
            event_type: (fields.values_of, fields.valid, fields.seen, fields.matchers, fields.names)
            for event_type, fields in self._by_type.items()
        }

    def remembered(self) -> list[set[Any] | dict[str, str]]:
        """The sets and dicts holding what was found valid: strings and tuples of strings only, never in a cycle."""
        remembered: list[set[Any] | dict[str, str]] = []
        for fields in self._by_type.values():
            remembered += [fields.valid, *fields.seen]
        return remembered

    def all_valid(self, events: list[Any]) -> bool:
        """Whether every event's label-like values are within their charset (the common case, checked fast)."""
        if self._first_bad_event is not None:
            return self._first_bad_event(events, self._tables, self.capacity, Metric, _metric_labels_problem) < 0
        problem = self.problem
        return all(problem(event) is None for event in events)

    def problem(self, event: EventBase) -> str | None:
        """What is wrong with the event's label-like values, or None."""
        fields = self._by_type[type(event)]
        values = fields.values_of(event)
        if self._check_values is not None:
            bad = self._check_values(fields.valid, fields.seen, fields.matchers, values, self.capacity)
            if bad >= 0:
                name, pattern, value = fields.names[bad], fields.patterns[bad], values[bad]
                return f"`{name}` {value!r} has characters outside {pattern.pattern}"
        elif values not in fields.valid:
            capacity = self.capacity
            for name, pattern, value, seen in zip(fields.names, fields.patterns, values, fields.seen, strict=True):
                if value in seen:
                    continue
                if pattern.fullmatch(value) is None:
                    return f"`{name}` {value!r} has characters outside {pattern.pattern}"
                if len(seen) < capacity:
                    seen[value] = value
            if len(fields.valid) < capacity:
                fields.valid.add(values)
        if type(event) is Metric:
            return _metric_labels_problem(event)
        return None


def _metric_labels_problem(event: Metric) -> str | None:
    """What is wrong with a custom metric event's label names and values, or None."""
    for label, value in event.labels.items():
        if _METRIC_NAME.fullmatch(label) is None:
            return f"label name {label!r} is not a valid Prometheus label name"
        if _LABEL.fullmatch(value) is None:
            return f"label `{label}` {value!r} has characters outside {LABEL_PATTERN}"
    return None
