"""The `aggregator` console script: the CLI, or which extra to install when only the producers' packages are there."""

import sys

# What the aggregator extra brings (import names); the producers need none of them.
AGGREGATOR_EXTRA = frozenset({"aiohttp", "anyio", "bcrypt", "prometheus_client", "rich", "typer"})


def main() -> None:
    try:
        from aggregator.cli import main as cli
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in AGGREGATOR_EXTRA:
            raise
        print(
            f"error: the aggregator needs {missing}, which is not installed: this is a producer-only install of "
            "tickbus (it emits events, it does not run the aggregator). For the aggregator: "
            "pip install 'tickbus[aggregator]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    cli()
