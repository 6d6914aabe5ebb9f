"""Fuzz with atheris: `python -m tests.fuzz [libFuzzer flags] NEW_CORPUS_DIR tests/fuzz/corpus`.

Only tickbus's own code (aggregator, schemas) is instrumented for coverage: instrumenting the libraries
too makes every input several times slower and guides the fuzzer toward their code instead.

    .venv/bin/python -m tests.fuzz -max_total_time=60 -max_len=65536 /tmp/new-corpus tests/fuzz/corpus
"""

import logging
import sys

import atheris  # type: ignore[import-untyped]  # no stubs; a development dependency

with atheris.instrument_imports(include=["aggregator", "schemas"]):
    from tests.fuzz.harness import declared_metrics, exercise


def main() -> None:
    metrics = declared_metrics()
    # Each refusal is logged: at fuzzing speed that is where the time would go.
    logging.disable(logging.CRITICAL)

    def one_input(data: bytes) -> None:
        exercise(data, metrics)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
