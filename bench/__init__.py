"""Throughput and latency benchmark of the real Spine pipeline against the hand-written reference.

`bench/run.py` is the entry point (`make bench`); see bench/README.md.
"""
