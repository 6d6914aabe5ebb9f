"""Types of the compiled exposition (aggregator/_fastrender.pyx)."""

from collections.abc import Callable, Mapping
from typing import Any

def render_plain(
    name: bytes,
    label_heads: tuple[bytes, ...],
    keys: list[tuple[str, ...]],
    start: int,
    end: int,
    series: Mapping[tuple[str, ...], Any],
    gauge: bool,
    exemplars: dict[Any, Any],
    exemplar_text: Callable[[Any], str],
) -> bytes: ...
