"""gpt-oss against the current stack, side by side: every metric for both, the difference, and a verdict
per workflow (better, on par, worse) with the metrics that decided it. Pure: two endpoint summaries in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EDIT_TOLERANCE = 0.05  # normalised edit distance: below this difference, on par


@dataclass(frozen=True)
class Metric:
    name: str  # what the report shows
    unit: str
    lower_is_better: bool
    relative: bool  # compared as a ratio (latency, throughput) or as an absolute difference (rates)


METRICS: dict[str, Metric] = {
    "correctness": Metric("first-pass correctness", "ratio", False, False),
    "edits_median": Metric("edits-to-accept median", "normalised", True, False),
    "edits_p90": Metric("edits-to-accept p90", "normalised", True, False),
    "no_edit_share": Metric("accepted with no edit", "ratio", False, False),
    "harmony_failures": Metric("harmony failures", "answers", True, False),
    "ttft_p50": Metric("TTFT median", "ms", True, True),
    "e2el_p50": Metric("end-to-end latency median", "ms", True, True),
    "safety_incidents": Metric("safety incidents", "cases", True, False),
    "error_rate": Metric("error rate", "ratio", True, False),
    "output_tokens_per_s": Metric("output throughput", "tokens/s", False, True),
}


def workflow_values(wf: dict[str, Any]) -> dict[str, float | None]:
    e = wf["edits_to_accept"]
    return {"correctness": wf["rate"], "edits_median": e["median"], "edits_p90": e["p90"],
            "no_edit_share": e["no_edit_share"], "harmony_failures": float(wf["harmony_failures"]),
            "ttft_p50": wf["latency_ms"]["ttft_p50"], "e2el_p50": wf["latency_ms"]["e2el_p50"]}


def overall_values(d: dict[str, Any]) -> dict[str, float | None]:
    e = d["edits_to_accept"]["overall"]
    return {"correctness": d["correctness"]["rate"], "edits_median": e["median"], "edits_p90": e["p90"],
            "no_edit_share": e["no_edit_share"], "harmony_failures": float(d["harmony"]["failed"]),
            "ttft_p50": d["latency_ms"]["ttft"]["p50"], "e2el_p50": d["latency_ms"]["e2el"]["p50"],
            "safety_incidents": float(len(d["safety"]["incidents"])), "error_rate": d["errors"]["rate"],
            "output_tokens_per_s": d["throughput"]["output_tokens_per_s"]}


def _judge(key: str, ours: float | None, theirs: float | None, max_regression: float) -> str:
    """'better', 'worse' or 'same' for gpt-oss (ours) against the current stack (theirs)."""
    if ours is None or theirs is None:
        return "n/a"
    m = METRICS[key]
    if m.relative:
        if theirs <= 0:
            return "n/a"
        change = ours / theirs - 1
        worse, better = (change > max_regression, change < -max_regression) if m.lower_is_better else \
            (change < -max_regression, change > max_regression)
    else:
        tol = EDIT_TOLERANCE if key.startswith("edits") else 1e-9
        diff = ours - theirs
        worse, better = (diff > tol, diff < -tol) if m.lower_is_better else (diff < -tol, diff > tol)
    return "worse" if worse else "better" if better else "same"


def judge_rows(ours: dict[str, float | None], theirs: dict[str, float | None], max_regression: float) -> list[dict[str, Any]]:
    rows = []
    for key, a in ours.items():
        b = theirs.get(key)
        rows.append({"metric": key, "name": METRICS[key].name, "unit": METRICS[key].unit, "gpt_oss": a, "current": b,
                     "difference": None if a is None or b is None else a - b,
                     "judgement": _judge(key, a, b, max_regression)})
    return rows


def verdict_of(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """worse (only worse), mixed (worse on some, better on others), better, or on par; with the metrics
    that decided it. Worse on anything, mixed included, fails the canary."""
    worse = [r["name"] for r in rows if r["judgement"] == "worse"]
    better = [r["name"] for r in rows if r["judgement"] == "better"]
    if worse:
        return ("mixed", worse) if better else ("worse", worse)
    return ("better", better) if better else ("on par", [])


def side_by_side(ours: dict[str, Any], theirs: dict[str, Any], *, max_regression: float) -> dict[str, Any]:
    """Per workflow and overall: rows of (metric, gpt-oss, current, difference, judgement) and a verdict.
    Latency and throughput are judged relative (beyond max_regression); quality metrics absolute."""
    out: dict[str, Any] = {"workflows": {}, "max_regression": max_regression}
    names = sorted(set(ours["correctness"]["workflows"]) | set(theirs["correctness"]["workflows"]))
    for name in names:
        a, b = ours["correctness"]["workflows"].get(name), theirs["correctness"]["workflows"].get(name)
        if a is None or b is None:
            continue
        rows = judge_rows(workflow_values(a), workflow_values(b), max_regression)
        verdict, why = verdict_of(rows)
        out["workflows"][name] = {"rows": rows, "verdict": verdict, "deciding": why}
    rows = judge_rows(overall_values(ours), overall_values(theirs), max_regression)
    verdict, why = verdict_of(rows)
    out["overall"] = {"rows": rows, "verdict": verdict, "deciding": why}
    return out


def worse_reasons(sbs: dict[str, Any]) -> list[str]:
    """One reason per workflow (and overall) where gpt-oss is worse than the current stack."""
    out = []
    for name, wf in [*sbs["workflows"].items(), ("all workflows", sbs["overall"])]:
        worse = [r["name"] for r in wf["rows"] if r["judgement"] == "worse"]
        if worse:
            out.append(f"gpt-oss is worse than the current stack on {name}: {', '.join(worse)}")
    return out


def trend_reasons(week: dict[str, Any]) -> list[str]:
    out = []
    for name, wf in week.items():
        if wf["verdict"] in ("worse", "mixed"):
            out.append(f"over the runs gpt-oss is worse than the current stack on {name}: {', '.join(wf['deciding'])}")
    return out

