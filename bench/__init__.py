"""Benchmarks: ``make bench`` (the quick ones, a few minutes each) and ``make bench-e2e``."""
