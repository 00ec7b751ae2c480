"""Summary statistics, computed the way vllm bench does (numpy's linear-interpolation percentiles)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Milliseconds, as vllm bench reports them."""
    ms = [v * 1000 for v in values]
    out: dict[str, Any] = {"n": len(ms), "mean": sum(ms) / len(ms) if ms else None}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(ms, q)
    out["median"] = out["p50"]
    return out
