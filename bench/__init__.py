"""Benchmarks (never timed tests): ``python -m bench`` compares the connector's Graph cost with the seed's."""
