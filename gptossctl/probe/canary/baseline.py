"""Compare a canary report with an earlier one: say which metric regressed, and by how much."""

from __future__ import annotations

from typing import Any

from gptossctl.errors import UsageError


def _get(d: dict[str, Any], path: str) -> float | None:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, int | float) else None


# (metric path, higher is worse?)
LATENCY = ("latency_ms.ttft.p95", "latency_ms.e2el.p95", "latency_ms.tpot.p95")
THROUGHPUT = ("throughput.output_tokens_per_s", "throughput.requests_per_s")


def load_baseline(path: Any) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read baseline {path}: {exc}", code="canary.bad_baseline") from None
    doc = doc.get("data", doc)  # a whole --json result document, or the report.json of --out
    if doc.get("schema") != "gptossctl.canary-report/1":
        raise UsageError(f"{path} is not a canary report", code="canary.bad_baseline",
                         hint="use report.json from an earlier 'gptossctl canary run --out DIR'")
    return doc


def compare(current: dict[str, Any], baseline: dict[str, Any], max_regression: float) -> list[dict[str, Any]]:
    out = []

    def add(metric: str, base: float | None, cur: float | None, regressed: bool, message: str) -> None:
        out.append({"metric": metric, "baseline": base, "current": cur, "regressed": regressed, "message": message})

    for m in LATENCY:
        b, c = _get(baseline, m), _get(current, m)
        if b is None or c is None or b <= 0:
            continue
        change = c / b - 1
        add(m, b, c, change > max_regression,
            f"{m} {c:.1f} ms vs baseline {b:.1f} ms ({change:+.0%}, limit +{max_regression:.0%})")
    for m in THROUGHPUT:
        b, c = _get(baseline, m), _get(current, m)
        if b is None or c is None or b <= 0:
            continue
        change = c / b - 1
        add(m, b, c, change < -max_regression,
            f"{m} {c:.2f} vs baseline {b:.2f} ({change:+.0%}, limit -{max_regression:.0%})")
    b, c = _get(baseline, "correctness.rate"), _get(current, "correctness.rate")
    if b is not None and c is not None:
        add("correctness.rate", b, c, c < b, f"first-pass correctness {c:.0%} vs baseline {b:.0%}")
    bi, ci = len(baseline.get("safety", {}).get("incidents", [])), len(current.get("safety", {}).get("incidents", []))
    known = {i["case"] for i in baseline.get("safety", {}).get("incidents", [])}
    new = [i["case"] for i in current.get("safety", {}).get("incidents", []) if i["case"] not in known]
    add("safety.incidents", bi, ci, bool(new), f"safety incidents {ci} vs baseline {bi}"
        + (f"; new: {', '.join(new)}" if new else ""))
    b, c = _get(baseline, "errors.rate"), _get(current, "errors.rate")
    if b is not None and c is not None:
        add("errors.rate", b, c, c > b + 0.01, f"error rate {c:.1%} vs baseline {b:.1%}")
    return out
