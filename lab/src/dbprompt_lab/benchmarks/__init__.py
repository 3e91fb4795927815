"""Benchmark scripts, each run as `python -m dbprompt_lab.benchmarks.NAME` (results in BENCHMARKS.md)."""
