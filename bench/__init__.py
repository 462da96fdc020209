"""Benchmarks, apart from tests: `python -m bench` runs them all and prints ratios."""
