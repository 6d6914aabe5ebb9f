"""The tickbus event contract: typed events and their wire format, free of any broker or Prometheus code."""

from schemas.events import (
    EVENT_TYPES,
    Dependency,
    Error,
    Event,
    Heartbeat,
    Metric,
    Order,
    Portfolio,
    Position,
    Prediction,
    Signal,
    Trade,
    kind_of,
)

__all__ = [
    "EVENT_TYPES",
    "Dependency",
    "Error",
    "Event",
    "Heartbeat",
    "Metric",
    "Order",
    "Portfolio",
    "Position",
    "Prediction",
    "Signal",
    "Trade",
    "kind_of",
]
