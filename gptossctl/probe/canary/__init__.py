"""Canary runs: suites of workflow cases with checks and a safety set (suite.py), an asyncio load
generator measuring like `vllm bench serve` (load.py), statistics (stats.py), the server's own metrics
(metrics.py), baseline comparison (baseline.py) and reports (report.py)."""
