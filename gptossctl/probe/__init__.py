"""Proving the service works: smoke checks (smoke.py), canary runs with latency, throughput,
correctness and safety metrics against a baseline (canary/), and report writers (junit.py)."""
