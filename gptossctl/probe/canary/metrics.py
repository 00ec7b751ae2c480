"""The server's own view: /metrics scraped before and after a run (counter and histogram deltas) and
gauges sampled during it. Series that an older or newer vLLM lacks are reported as absent."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>[-+\w.eE]+)')
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
              "vllm:inter_token_latency_seconds", "vllm:request_queue_time_seconds")
COUNTERS = ("vllm:num_preemptions_total", "vllm:request_success_total", "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total")
GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")


@dataclass(frozen=True)
class Scrape:
    samples: dict[str, float] = field(default_factory=dict)  # "name{le=..}" summed over other labels
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # histogram -> (le, count)

    def value(self, name: str) -> float | None:
        return self.samples.get(name)


def parse(text: str) -> Scrape:
    samples: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, raw = m.group("name"), m.group("labels") or "", m.group("value")
        try:
            value = float(raw)
        except ValueError:
            continue
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                b = buckets.setdefault(name[:-7], {})
                b[bound] = b.get(bound, 0.0) + value
            continue
        samples[name] = samples.get(name, 0.0) + value  # summed over model/engine labels
    return Scrape(samples, {k: sorted(v.items()) for k, v in buckets.items()})


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th observation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_count) / (count - prev_count) if count > prev_count else 0)
        prev_le, prev_count = le, count
    return None


def delta(before: Scrape, after: Scrape, gauge_samples: list[Scrape]) -> dict[str, Any]:
    out: dict[str, Any] = {"absent": []}
    for h in HISTOGRAMS:
        if f"{h}_count" not in after.samples:
            out["absent"].append(h)
            continue
        count = after.samples[f"{h}_count"] - before.samples.get(f"{h}_count", 0.0)
        total = after.samples.get(f"{h}_sum", 0.0) - before.samples.get(f"{h}_sum", 0.0)
        b_before = dict(before.buckets.get(h, []))
        diff = [(le, c - b_before.get(le, 0.0)) for le, c in after.buckets.get(h, [])]
        out[h] = {"count": count, "mean_ms": total / count * 1000 if count else None,
                  "p50_ms": _ms(_bucket_quantile(diff, 0.5)), "p95_ms": _ms(_bucket_quantile(diff, 0.95))}
    for c in COUNTERS:
        if c not in after.samples:
            out["absent"].append(c)
            continue
        out[c] = after.samples[c] - before.samples.get(c, 0.0)
    for g in GAUGES:
        seen = [s.samples[g] for s in gauge_samples if g in s.samples]
        if not seen:
            out["absent"].append(g)
            continue
        out[g] = {"max": max(seen), "last": seen[-1]}
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000
