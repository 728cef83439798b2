"""On-demand benchmarks (not part of the test suite): `uv run --group bench python -m benchmarks.throughput`."""
