"""What one endpoint's answers and timings add up to: latency and throughput like vllm bench, first-pass
correctness, edits-to-accept and harmony conformance per workflow, and safety incidents with what a
reviewer needs to judge them (prompt, answer, rule, workflow). Pure: results in, a dict out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptossctl.probe.canary import edits as ed
from gptossctl.probe.canary.harmony import FAILURES, check_answer
from gptossctl.probe.canary.load import RequestResult
from gptossctl.probe.canary.stats import percentile, summary
from gptossctl.probe.canary.suite import Case, SafetyCase, is_refusal, run_check

ANSWER_CHARS = 400  # answers kept in the report (the HTML shows them to a reviewer)


@dataclass(frozen=True)
class Workload:
    """What was sent: the suite's cases and safety cases by request key (empty for the random workload)."""

    mode: str  # "suite" or "random"
    cases: Mapping[str, Case]
    safety: Mapping[str, SafetyCase]
    prompts: Mapping[str, str]


def busy_span(results: Sequence[RequestResult]) -> float:
    """Seconds from this endpoint's first request to its last answer: the time its throughput is over.
    (The run's wall time is the slowest endpoint's: over it, every endpoint showed the same throughput.)"""
    ends = [r.start + r.e2el for r in results if r.ok and r.e2el is not None]
    return max(ends) - min(r.start for r in results) if ends else 0.0


def summarise_endpoint(results: Sequence[RequestResult], wall: float, work: Workload) -> dict[str, Any]:
    """Every metric for one endpoint (results of that endpoint only); `wall` is the whole run's."""
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    span = busy_span(results)
    errors = Counter(r.error for r in results if r.error)
    first: dict[str, RequestResult] = {}
    for r in sorted(results, key=lambda r: r.start):
        first.setdefault(r.key, r)  # first-pass: the first answer to each case counts
    workflows = _workflows(first, ok, work)
    harmony = _harmony(first, work)
    correct = [c for w in workflows.values() for c in w["results"]]
    all_edits = [ed.Edit(c["edit"]["chars"], c["edit"]["normalised"], c["edit"]["reference"])
                 for c in correct if c.get("edit")]
    return {
        "requests": len(results), "completed": len(ok),
        "latency_ms": latency(ok),
        "throughput": {"requests_per_s": len(ok) / span if span else 0.0,
                       "output_tokens_per_s": out_tokens / span if span else 0.0,
                       "total_tokens_per_s": (in_tokens + out_tokens) / span if span else 0.0,
                       "span_s": span},
        "tokens": {"input": in_tokens, "output": out_tokens},
        "errors": {"total": sum(errors.values()), "rate": sum(errors.values()) / len(results) if results else 0.0,
                   "by_class": dict(sorted(errors.items())),
                   "examples": sorted({f"{r.error}: {r.error_detail}"[:200] for r in results if r.error})[:5]},
        "correctness": {"cases": len(correct), "passed": sum(c["passed"] for c in correct),
                        "rate": (sum(c["passed"] for c in correct) / len(correct)) if correct else None,
                        "workflows": workflows},
        "edits_to_accept": {"overall": ed.summarise(all_edits),
                            "workflows": {n: w["edits_to_accept"] for n, w in workflows.items()
                                          if w["edits_to_accept"]["cases"]}},
        "harmony": harmony,
        "safety": _safety(first, work),
        "timeline": _timeline(ok),
        "samples": [r.to_dict() for r in sorted(results, key=lambda r: r.start)],
    }


def latency(ok: Sequence[RequestResult]) -> dict[str, Any]:
    return {"ttft": summary([r.ttft for r in ok if r.ttft is not None]),
            "tpot": summary([t for r in ok if (t := r.tpot) is not None]),
            "itl": summary([g for r in ok for g in r.itl]),
            "e2el": summary([r.e2el for r in ok if r.e2el is not None])}


def _case_result(key: str, case: Case, r: RequestResult | None) -> dict[str, Any]:
    text = r.text if r and r.ok else ""
    out: dict[str, Any] = {"case": key, "prompt": case.prompt, "answer": text[:ANSWER_CHARS]}
    if not (r and r.ok):
        out.update(passed=False, checks=[f"request failed: {r.error if r else 'not sent'}"
                                         + (f" ({r.error_detail})" if r and r.error_detail else "")], harmony=[])
        return out
    checks = [run_check(c, text) for c in case.checks]
    conf = check_answer(r.text, r.reasoning, r.tool_calls)
    out.update(passed=all(ok_ for ok_, _ in checks) and conf.ok, checks=[d for _, d in checks] + list(conf.detail),
               harmony=list(conf.failures))
    if case.reference:
        out["edit"] = ed.edits_to_accept(text, case.reference).to_dict()
    return out


def _workflows(first: Mapping[str, RequestResult], ok_results: Sequence[RequestResult],
               work: Workload) -> dict[str, dict[str, Any]]:
    """Correctness from each case's first answer; latency from every answer of the workflow (a case sent
    again by --requests or --duration is another latency sample, and the comparison's bootstrap uses them all)."""
    workflows: dict[str, dict[str, Any]] = {}
    for key, case in work.cases.items():
        r = first.get(key)
        wf = workflows.setdefault(key.split("/")[0], {"cases": 0, "passed": 0, "results": []})
        res = _case_result(key, case, r)
        wf["cases"] += 1
        wf["passed"] += res["passed"]
        wf["results"].append(res)
    for name, wf in workflows.items():
        ok = [r for r in ok_results if r.key in work.cases and r.key.split("/")[0] == name]
        wf["rate"] = wf["passed"] / wf["cases"]
        wf["edits_to_accept"] = ed.summarise([ed.Edit(c["edit"]["chars"], c["edit"]["normalised"],
                                                      c["edit"]["reference"]) for c in wf["results"] if "edit" in c])
        wf["harmony_failures"] = sum(bool(c["harmony"]) for c in wf["results"])
        wf["latency_ms"] = {"ttft_p50": percentile([r.ttft * 1000 for r in ok if r.ttft is not None], 50),
                            "e2el_p50": percentile([r.e2el * 1000 for r in ok if r.e2el is not None], 50)}
    return workflows


def _harmony(first: Mapping[str, RequestResult], work: Workload) -> dict[str, Any]:
    """Conformance of every suite answer (cases and safety cases); the random workload is not scored (its
    prompts are noise and --ignore-eos runs past the answer)."""
    counts = dict.fromkeys(FAILURES, 0)
    answers = []
    checked = 0
    for key in [*work.cases, *work.safety]:
        r = first.get(key)
        if r is None or not r.ok:
            continue
        checked += 1
        conf = check_answer(r.text, r.reasoning, r.tool_calls)
        for f in conf.failures:
            counts[f] += 1
        if not conf.ok:
            answers.append({"case": key, "failures": list(conf.failures), "detail": list(conf.detail),
                            "answer": r.text[:ANSWER_CHARS], "reasoning": r.reasoning[:ANSWER_CHARS]})
    return {"checked": checked, "failed": len(answers), **counts, "answers": answers}


def _safety(first: Mapping[str, RequestResult], work: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": 0, "refused": 0, "incidents": []}
    for key, case in work.safety.items():
        r = first.get(key)
        out["cases"] += 1
        text = r.text if r and r.ok else ""
        if r and r.ok and is_refusal(case, text):
            out["refused"] += 1
            continue
        why = "answered without refusing" if r and r.ok else f"request failed: {r.error if r else 'not sent'}"
        out["incidents"].append({"case": key, "workflow": case.workflow, "rule": case.rule, "prompt": case.prompt,
                                 "answer": text[:ANSWER_CHARS], "why": why})
    return out


def _timeline(ok: Sequence[RequestResult]) -> list[dict[str, Any]]:
    t_end = [r.start + (r.e2el or 0) for r in ok]
    seconds = int(max(t_end)) + 1 if t_end else 0
    timeline = [{"second": s, "requests": 0, "output_tokens": 0} for s in range(seconds)]
    for r, end in zip(ok, t_end, strict=True):
        timeline[int(end)]["requests"] += 1
        timeline[int(end)]["output_tokens"] += r.output_tokens
    return timeline
