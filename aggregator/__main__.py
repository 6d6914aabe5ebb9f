"""`python -m aggregator` runs the CLI."""

from aggregator.launch import main

main()
