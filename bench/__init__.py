"""Benchmarks: sync and metrics at up to a million deals, against a baseline in the same run.

Run ``python -m bench --deals N [--store URL] [--seed S]`` from the repository
root; see ``bench/README.md`` for the parts, the budgets and the latest numbers.
"""
