"""Benchmarks of the simulated SSS engine (run ``python -m benchmarks.simulation --help``)."""
