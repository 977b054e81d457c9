"""Benchmark suite (issue 6): `make bench` or `.venv/bin/python -m bench --help`.

Not part of the test run (pytest's testpaths is `tests`).
"""
