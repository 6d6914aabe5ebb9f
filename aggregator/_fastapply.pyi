"""Types of the compiled apply loop (aggregator/_fastapply.pyx)."""

from collections.abc import Callable
from typing import Any

class Update: ...

def make_update(
    spec: Any, family: Any, event_type: type[Any], python_update: Callable[[Any, float], None]
) -> Update: ...
def apply(events: list[Any], plan: dict[type[Any], tuple[Update, ...]], now: float) -> None: ...
def compiled_kind(update: Update) -> str: ...
def share_key(tables: list[dict[str, str] | None], key: tuple[str, ...], limit: int) -> tuple[str, ...]: ...
def check_values(
    valid: set[tuple[str, ...]],
    seen: tuple[set[str], ...],
    patterns: tuple[Any, ...],
    values: tuple[str, ...],
    capacity: int,
) -> int: ...
def first_bad_event(
    events: list[Any],
    fields_by_type: dict[type[Any], tuple[Any, set[tuple[str, ...]], tuple[set[str], ...], tuple[Any, ...]]],
    capacity: int,
    metric_type: type[Any],
    metric_problem: Callable[[Any], str | None],
) -> int: ...
