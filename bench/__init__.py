"""Benchmarks of issue 5 (performance): one script per target, ``python -m bench.run_all`` for the table."""
