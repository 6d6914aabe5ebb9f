"""Benchmarks of tickbus side by side with its baselines; `aggregator bench` is their command."""
