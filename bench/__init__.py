"""Benchmarks (never timed tests): ``python -m bench`` measures Graph cost, speed and memory (docs/benchmarks.md)."""
