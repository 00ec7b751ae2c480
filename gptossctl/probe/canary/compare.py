"""gpt-oss against the current stack, side by side: every metric for both, the difference, and a verdict
per workflow with the metrics that decided it. Pure: two endpoint summaries in.

Latency and throughput are noisy, so they are judged with a confidence statement: a seeded bootstrap
interval (95 %) of the relative change in the median TTFT and end-to-end latency, and in output tokens per
second of request time, over every answer of each endpoint. "same" only when the whole interval lies inside
±max_regression; "worse" or "better" only when it lies wholly beyond that band; "inconclusive" when it
straddles an edge; "not enough data" below MIN_SAMPLES answers per endpoint. Quality metrics (correctness,
edits-to-accept, harmony, safety, errors) are counts over the same cases at temperature 0, judged on the
difference itself (edits beyond EDIT_TOLERANCE, the others on any difference).

A verdict is worse (worse only), mixed (worse and better), better, on par (every metric the same),
inconclusive (nothing worse or better, some metric inconclusive) or not enough data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptossctl.probe.canary.stats import (
    CONFIDENCE,
    INCONCLUSIVE,
    MIN_SAMPLES,
    NOT_ENOUGH,
    RESAMPLES,
    compare_samples,
    median,
)

EDIT_TOLERANCE = 0.05  # normalised edit distance: below this difference, on par
EXACT = 1e-9  # counts and rates: any difference

Stat = Callable[[Sequence[Any]], float]
# metric -> (gpt-oss samples, current samples, the statistic over a list of samples)
Samples = Mapping[str, tuple[Sequence[Any], Sequence[Any], Stat]]


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


def tolerance_of(key: str, max_regression: float) -> float:
    """The stated band inside which a difference is 'same': relative for latency and throughput."""
    if METRICS[key].relative:
        return max_regression
    return EDIT_TOLERANCE if key.startswith("edits") else EXACT


def _judge(key: str, ours: float | None, theirs: float | None, max_regression: float) -> str:
    """'better', 'worse' or 'same' for gpt-oss (ours) against the current stack (theirs), on the values alone."""
    if ours is None or theirs is None:
        return "n/a"
    m = METRICS[key]
    tol = tolerance_of(key, max_regression)
    if m.relative:
        if theirs <= 0:
            return "n/a"
        diff = ours / theirs - 1
    else:
        diff = ours - theirs
    worse, better = (diff > tol, diff < -tol) if m.lower_is_better else (diff < -tol, diff > tol)
    return "worse" if worse else "better" if better else "same"


def judge_rows(ours: dict[str, float | None], theirs: dict[str, float | None], max_regression: float, *,
               samples: Samples | None = None, min_samples: int = MIN_SAMPLES) -> list[dict[str, Any]]:
    """One row per metric. A metric with samples is judged by its bootstrap interval (relative metrics as a
    ratio, the others as a difference) against its tolerance; one without, on the two values."""
    rows = []
    for key, a in ours.items():
        b = theirs.get(key)
        m = METRICS[key]
        tol = tolerance_of(key, max_regression)
        row: dict[str, Any] = {"metric": key, "name": m.name, "unit": m.unit, "gpt_oss": a, "current": b,
                               "difference": None if a is None or b is None else a - b,
                               "tolerance": tol, "relative": m.relative, "interval": None, "samples": None}
        if samples is not None and key in samples:
            sa, sb, stat = samples[key]
            c = compare_samples(sa, sb, stat, tolerance=tol, lower_is_better=m.lower_is_better,
                                relative=m.relative, min_samples=min_samples)
            row.update(judgement=c.judgement, interval=list(c.interval) if c.interval else None,
                       samples=list(c.samples))
        else:
            row["judgement"] = _judge(key, a, b, max_regression)
        rows.append(row)
    return rows


def verdict_of(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """worse (only worse), mixed (worse on some, better on others), better, on par (all the same),
    inconclusive or not enough data; with the metrics that decided it. Worse on anything, mixed included,
    fails the canary; inconclusive and not enough data do not, and say which metrics were not settled."""
    def named(judgement: str) -> list[str]:
        return [r["name"] for r in rows if r["judgement"] == judgement]

    worse, better = named("worse"), named("better")
    if worse:
        return ("mixed", worse) if better else ("worse", worse)
    if better:
        return "better", better
    if named(INCONCLUSIVE):
        return INCONCLUSIVE, named(INCONCLUSIVE)
    if named(NOT_ENOUGH):
        return NOT_ENOUGH, named(NOT_ENOUGH)
    return "on par", []


def _ms(field: str) -> Stat:
    return lambda xs: median([x[field] for x in xs])


def _tokens_per_s(xs: Sequence[Any]) -> float:
    """Output tokens per second of request time: at the same concurrency, throughput changes by this ratio."""
    t = sum(x["e2el"] for x in xs)
    return sum(x["output_tokens"] for x in xs) / t if t > 0 else 0.0


def request_samples(e: dict[str, Any], workflow: str | None = None) -> Samples:
    """The per-answer samples of one endpoint for the noisy metrics (the report's `samples`), per metric."""
    ok = [s for s in e.get("samples") or () if s.get("ok") and s.get("e2el") is not None
          and (workflow is None or str(s.get("key", "")).split("/")[0] == workflow)]
    out: dict[str, tuple[Sequence[Any], Sequence[Any], Stat]] = {
        "ttft_p50": ([s for s in ok if s.get("ttft") is not None], (), _ms("ttft")),
        "e2el_p50": (ok, (), _ms("e2el"))}
    if workflow is None:
        out["output_tokens_per_s"] = (ok, (), _tokens_per_s)
    return out


def _pair(ours: Samples, theirs: Samples) -> Samples:
    return {k: (a, theirs[k][0], stat) for k, (a, _, stat) in ours.items() if k in theirs}


def side_by_side(ours: dict[str, Any], theirs: dict[str, Any], *, max_regression: float,
                 min_samples: int = MIN_SAMPLES) -> dict[str, Any]:
    """Per workflow and overall: rows of (metric, gpt-oss, current, difference, judgement, interval,
    tolerance, samples) and a verdict."""
    out: dict[str, Any] = {"workflows": {}, "max_regression": max_regression, "confidence": CONFIDENCE,
                           "resamples": RESAMPLES, "min_samples": min_samples, "edit_tolerance": EDIT_TOLERANCE}
    names = sorted(set(ours["correctness"]["workflows"]) | set(theirs["correctness"]["workflows"]))
    for name in names:
        a, b = ours["correctness"]["workflows"].get(name), theirs["correctness"]["workflows"].get(name)
        if a is None or b is None:
            continue
        rows = judge_rows(workflow_values(a), workflow_values(b), max_regression, min_samples=min_samples,
                          samples=_pair(request_samples(ours, name), request_samples(theirs, name)))
        verdict, why = verdict_of(rows)
        out["workflows"][name] = {"rows": rows, "verdict": verdict, "deciding": why}
    rows = judge_rows(overall_values(ours), overall_values(theirs), max_regression, min_samples=min_samples,
                      samples=_pair(request_samples(ours), request_samples(theirs)))
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

