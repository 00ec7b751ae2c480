"""Compare a canary report with an earlier one: say which metric regressed, and by how much.

A baseline is read defensively (it may be any file a person pointed at): size-capped, UTF-8, JSON nested
no deeper than a report is, and the fields compared are type-checked, so a wrong file is exit 2 saying
what to give instead, never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gptossctl.errors import UsageError
from gptossctl.fsutil import load_json

SCHEMAS = ("gptossctl.canary-report/1", "gptossctl.canary-report/2", "gptossctl.canary-report/3")
MAX_BYTES = 256 * 1024 * 1024
EDIT_TOLERANCE = 0.05  # normalised edits-to-accept median may rise this much before it is a regression
_HINT = "give report.json from an earlier 'gptossctl canary run --out DIR' (or its --json output)"


# (metric path, higher is worse?)
LATENCY = ("latency_ms.ttft.p95", "latency_ms.e2el.p95", "latency_ms.tpot.p95")
THROUGHPUT = ("throughput.output_tokens_per_s", "throughput.requests_per_s")


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=False)


class _Summary(_Loose):
    p95: float | None = None


class _Latency(_Loose):
    ttft: _Summary | None = None
    e2el: _Summary | None = None
    tpot: _Summary | None = None


class _Incident(_Loose):
    case: str


class _Safety(_Loose):
    incidents: list[_Incident] = []


class _Edits(_Loose):
    workflows: dict[str, dict[str, float | int | None]] = {}


class _BaselineShape(_Loose):
    """The fields compare() reads, with their types; everything else passes through."""

    schema_: str
    latency_ms: _Latency | None = None
    throughput: dict[str, float] | None = None
    correctness: dict[str, Any] | None = None
    safety: _Safety | None = None
    errors: dict[str, Any] | None = None
    edits_to_accept: _Edits | None = None
    harmony: dict[str, Any] | None = None


def load_baseline(path: Path, *, what: str = "canary baseline") -> dict[str, Any]:
    """A canary report (`what`: how messages name it: the baseline, or a run report of a trend)."""
    try:
        doc = load_json(path, what=what, code="canary.bad_baseline", limit=MAX_BYTES)
    except UsageError as exc:  # the reason from fsutil, the remedy from here
        raise UsageError(exc.message, code="canary.bad_baseline", hint=_HINT) from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc = doc["data"]  # a whole --json result document
    if not isinstance(doc, dict) or doc.get("schema") not in SCHEMAS:
        raise UsageError(f"{path} is not a canary report", code="canary.bad_baseline", hint=_HINT)
    try:
        _BaselineShape.model_validate({**doc, "schema_": doc["schema"]})
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise UsageError(f"{path}: a canary report with fields of the wrong type ({where})",
                         code="canary.bad_baseline", hint=_HINT) from None
    return doc


def _get(d: dict[str, Any], path: str) -> float | None:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else None


def compare(current: dict[str, Any], baseline: dict[str, Any], max_regression: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

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
    _edits(current, baseline, add)
    b, c = _get(baseline, "harmony.failed"), _get(current, "harmony.failed")
    if b is not None and c is not None:
        add("harmony.failed", b, c, c > b, f"harmony failures {c:.0f} vs baseline {b:.0f}")
    known = {i["case"] for i in (baseline.get("safety") or {}).get("incidents") or []}
    now = [i["case"] for i in current["safety"]["incidents"]]
    new = [i for i in now if i not in known]
    add("safety.incidents", float(len(known)), float(len(now)), bool(new),
        f"safety incidents {len(now)} vs baseline {len(known)}" + (f"; new: {', '.join(new)}" if new else ""))
    b, c = _get(baseline, "errors.rate"), _get(current, "errors.rate")
    if b is not None and c is not None:
        add("errors.rate", b, c, c > b + 0.01, f"error rate {c:.1%} vs baseline {b:.1%}")
    return out


def _edits(current: dict[str, Any], baseline: dict[str, Any], add: Any) -> None:
    """Edits-to-accept median per workflow: a rise of more than EDIT_TOLERANCE (normalised) regressed."""
    base = (baseline.get("edits_to_accept") or {}).get("workflows") or {}
    for name, cur in sorted(((current.get("edits_to_accept") or {}).get("workflows") or {}).items()):
        b, c = (base.get(name) or {}).get("median"), cur.get("median")
        if not isinstance(b, int | float) or not isinstance(c, int | float):
            continue
        add(f"edits_to_accept.{name}.median", float(b), float(c), c > b + EDIT_TOLERANCE,
            f"edits-to-accept median on {name} {c:.2f} vs baseline {b:.2f} (limit +{EDIT_TOLERANCE:.2f})")
