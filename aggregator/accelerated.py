"""The compiled helpers of aggregator/_fastapply.pyx where they were built, or None where they were not."""

from types import ModuleType


def compiled() -> ModuleType | None:
    """The compiled module, or None (tickbus installed without a C compiler: the pure-Python paths run)."""
    try:
        from aggregator import _fastapply
    except ImportError:
        return None
    return _fastapply
