"""Runnable examples of trading components that emit through tickbus: a strategy, an executor and a model."""
