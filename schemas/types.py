"""Constrained field types shared by every event: label values, names, durations, probabilities."""

from typing import Annotated

from msgspec import Meta

LABEL_PATTERN = r"^[A-Za-z0-9_.:/+=@{}<> -]*$"
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
METRIC_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# Written for the JSON Schema (ECMA, where `$` is the end); Python checks them with fullmatch, since
# Python's `$` also matches before a final newline.
LABEL_MAX_LENGTH = 64

# 2100-01-01: a bound that also rejects inf and NaN.
MAX_TIMESTAMP = 4_102_444_800.0
# Any amount of money, quantity or price a trading system reports fits well inside this.
MAX_AMOUNT = 1e15
# A day: anything longer is a clock or unit error, not a latency.
MAX_DURATION = 86_400.0

Timestamp = Annotated[
    float,
    Meta(gt=0, lt=MAX_TIMESTAMP, description="Producer clock, seconds since the Unix epoch."),
]
# The charset of label-like strings is part of the schema (`pattern` in the JSON Schema) but is
# checked by schemas.labels.LabelCheck rather than by msgspec at decode: the same few values repeat
# in every event, and checking each distinct value once is several times cheaper than a regex per field.
SourceName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=LABEL_MAX_LENGTH,
        extra_json_schema={"pattern": NAME_PATTERN},
        description="Name of the emitting component (letters, digits, _ . : -).",
    ),
]
LabelValue = Annotated[
    str,
    Meta(
        max_length=LABEL_MAX_LENGTH,
        extra_json_schema={"pattern": LABEL_PATTERN},
        description="A short categorical value that becomes a Prometheus label.",
    ),
]
RequiredLabel = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=LABEL_MAX_LENGTH,
        extra_json_schema={"pattern": LABEL_PATTERN},
        description="A short, non-empty categorical value that becomes a Prometheus label.",
    ),
]
LabelName = Annotated[
    str,
    Meta(min_length=1, max_length=LABEL_MAX_LENGTH, extra_json_schema={"pattern": METRIC_NAME_PATTERN}),
]
MetricName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=METRIC_NAME_PATTERN,
        description="Name of a custom metric declared in the aggregator's config.",
    ),
]
Seconds = Annotated[
    float,
    Meta(ge=0, le=MAX_DURATION, description="A duration in seconds, non-negative and finite."),
]
Probability = Annotated[float, Meta(ge=0, le=1, description="A probability in 0..1.")]
Ratio = Annotated[float, Meta(ge=0, le=1, description="A fraction in 0..1.")]
Amount = Annotated[
    float,
    Meta(ge=-MAX_AMOUNT, le=MAX_AMOUNT, description="A finite amount (money, P&L, value)."),
]
NonNegativeAmount = Annotated[
    float,
    Meta(ge=0, le=MAX_AMOUNT, description="A finite, non-negative amount (quantity, price)."),
]
BasisPoints = Annotated[
    float,
    Meta(ge=-1e6, le=1e6, description="Basis points (1 bp = 0.01%); positive means worse than expected."),
]
Count = Annotated[int, Meta(ge=0, le=2**53, description="A non-negative count.")]
FreeText = Annotated[str, Meta(max_length=2048, description="Free text: logged, never a label.")]
Identifier = Annotated[str, Meta(max_length=128, description="An id (order, position): never a label.")]
