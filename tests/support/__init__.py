"""Helpers shared by the tests: scraping, waiting, running the aggregator as a user would."""
