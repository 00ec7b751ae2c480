"""Summary statistics, computed the way vllm bench does (numpy's linear-interpolation percentiles), and the
confidence of a comparison between two endpoints: a seeded percentile bootstrap of the change in a
statistic (the median, or a throughput) judged against a stated tolerance, with a minimum sample size."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


# ---------------------------------------------------------------- confidence of a comparison

CONFIDENCE = 0.95  # the bootstrap interval's level
RESAMPLES = 1000  # bootstrap resamples per comparison (seeded: the same samples give the same interval)
MIN_SAMPLES = 20  # per endpoint: below this a comparison says "not enough data" rather than guess
NOT_ENOUGH = "not enough data"
INCONCLUSIVE = "inconclusive"


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def bootstrap_change(ours: Sequence[Any], theirs: Sequence[Any], stat: Callable[[Sequence[Any]], float], *,
                     relative: bool, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = 0) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of stat(ours) / stat(theirs) - 1 (relative) or stat(ours) -
    stat(theirs) (absolute): each endpoint's samples resampled with replacement, `resamples` times, from a
    seeded generator (the same samples always give the same interval). None when a resample's statistic
    cannot be divided by (theirs <= 0)."""
    rng = random.Random(seed)
    changes = []
    for _ in range(resamples):
        a = stat(rng.choices(ours, k=len(ours)))
        b = stat(rng.choices(theirs, k=len(theirs)))
        if relative:
            if b <= 0:
                return None
            changes.append(a / b - 1)
        else:
            changes.append(a - b)
    tail = (1 - confidence) / 2 * 100
    lo, hi = percentile(changes, tail), percentile(changes, 100 - tail)
    assert lo is not None and hi is not None
    return lo, hi


def judge_interval(interval: tuple[float, float], tolerance: float, *, lower_is_better: bool) -> str:
    """'same' when the whole interval lies inside [-tolerance, +tolerance]; 'worse' or 'better' (for the
    first endpoint) when it lies wholly beyond the band on one side; 'inconclusive' when it straddles an edge."""
    lo, hi = interval
    if -tolerance <= lo and hi <= tolerance:
        return "same"
    if lo > tolerance:
        return "worse" if lower_is_better else "better"
    if hi < -tolerance:
        return "better" if lower_is_better else "worse"
    return INCONCLUSIVE


@dataclass(frozen=True)
class Comparison:
    judgement: str  # better, worse, same, inconclusive, not enough data (for the first endpoint)
    interval: tuple[float, float] | None  # of the change, at CONFIDENCE
    samples: tuple[int, int]


def compare_samples(ours: Sequence[Any], theirs: Sequence[Any], stat: Callable[[Sequence[Any]], float], *,
                    tolerance: float, lower_is_better: bool, relative: bool = True,
                    min_samples: int = MIN_SAMPLES, seed: int = 0) -> Comparison:
    """Judge ours against theirs on `stat` with a bootstrap interval and a stated tolerance; fewer than
    `min_samples` on either side is 'not enough data', whatever the point estimates say."""
    n = (len(ours), len(theirs))
    if min(n) < max(min_samples, 1):
        return Comparison(NOT_ENOUGH, None, n)
    interval = bootstrap_change(ours, theirs, stat, relative=relative, seed=seed)
    if interval is None:
        return Comparison("n/a", None, n)
    return Comparison(judge_interval(interval, tolerance, lower_is_better=lower_is_better), interval, n)
