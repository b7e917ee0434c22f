"""Benchmarks: ReaLM against the tools users would pick instead, measured in the same run.

Run ``python -m bench [NAMES...] [--quick] [--json FILE]``; every benchmark prints a table with
ReaLM's figure, the peer's and their ratio, and rewrites its own section of docs/benchmarks.md.
"""
