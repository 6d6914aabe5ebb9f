"""The compiled helpers (aggregator/_fastapply.pyx, _fastrender.pyx) where they were built, or None."""

from types import ModuleType


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
