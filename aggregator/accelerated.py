"""The compiled helpers (aggregator/_fastapply.pyx, _fastrender.pyx, _totals.pyx) where they were built, or None."""

from collections.abc import MutableMapping
from types import ModuleType
from typing import TypeVar

Container = TypeVar("Container")


def compiled() -> ModuleType | None:
    """The compiled module, or None (tickbus installed without a C compiler: the pure-Python paths run)."""
    try:
        from aggregator import _fastapply
    except ImportError:
        return None
    return _fastapply


def compiled_render() -> ModuleType | None:
    """The compiled exposition, or None (the pure-Python renderer runs)."""
    try:
        from aggregator import _fastrender
    except ImportError:
        return None
    return _fastrender


def counter_totals() -> MutableMapping[tuple[str, ...], float]:
    """An empty table of counter totals: the compiled one (no float object per series), or a dict."""
    try:
        from aggregator import _totals
    except ImportError:
        return {}
    return _totals.Totals()


def untracked(container: Container) -> Container:
    """`container`, left out of the cyclic collector's walks where the compiled helpers were built.

    Only for the sets and lists of series keys and rows that the store and its checkpoints hold, which can never
    be part of a reference cycle: at a million series each walk over them stalled the event loop for up to a
    tenth of a second, and a young generation holding a commit's keys was walked again and again.
    """
    module = compiled()
    if module is not None:
        module.untrack(container)
    return container
