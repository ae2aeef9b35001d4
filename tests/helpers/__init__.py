"""Builders, cases and comparisons shared by the tests and by the ranks they spawn."""
