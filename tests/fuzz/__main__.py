"""Fuzz with atheris: `python -m tests.fuzz [libFuzzer flags] NEW_CORPUS_DIR tests/fuzz/corpus`.

Only tickbus's own code (aggregator, schemas) is instrumented for coverage: instrumenting the libraries
too makes every input several times slower and guides the fuzzer toward their code instead. Most
mutations are structured (a value, field, kind, label or batch changed, harness.mutate_structure), so
that inputs get past the decoder into the catalog, the store and the renderer; the rest flip bytes.

    .venv/bin/python -m tests.fuzz -max_total_time=60 -max_len=65536 /tmp/new-corpus tests/fuzz/corpus
"""

import logging
import random
import sys

import atheris  # type: ignore[import-untyped]  # no stubs; a development dependency

with atheris.instrument_imports(include=["aggregator", "schemas"]):
    from tests.fuzz.harness import declared_metrics, exercise, mutate_structure


def main() -> None:
    metrics = declared_metrics()
    # Each refusal is logged: at fuzzing speed that is where the time would go.
    logging.disable(logging.CRITICAL)

    def one_input(data: bytes) -> None:
        exercise(data, metrics)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        """Mostly changes an event author could make (harness.mutate_structure), sometimes raw bytes."""
        rng = random.Random(seed)
        if rng.random() < 0.7:
            changed = mutate_structure(data, rng)
            if changed is not None and len(changed) <= max_size:
                return changed
        mutated: bytes = atheris.Mutate(data, max_size)
        return mutated

    # libFuzzer runs argv[0] through the shell for -merge and -jobs: run this module again, not its file.
    atheris.Setup([f"{sys.executable} -m tests.fuzz", *sys.argv[1:]], one_input, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
