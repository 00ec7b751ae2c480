"""A week of canary runs on one page: each metric over time per workflow and per endpoint (gpt-oss and the
current stack), the baseline as a reference line, the week's side-by-side verdict per workflow (medians
over the runs) and the final verdict. Written as trend.html (self-contained: inline SVG, no script, no
external reference) and trend.json (`gptossctl.canary-trend/1`)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from gptossctl.errors import UsageError
from gptossctl.fsutil import atomic_write
from gptossctl.probe.canary import svg
from gptossctl.probe.canary.baseline import load_baseline
from gptossctl.probe.canary.compare import (
    METRICS,
    judge_rows,
    overall_values,
    trend_reasons,
    verdict_of,
    workflow_values,
)
from gptossctl.probe.canary.page import Raw, num, page, table, tag, tile, verdict_box

TREND_SCHEMA = "gptossctl.canary-trend/1"
ENDPOINTS = ("gpt-oss", "current")
ALL = "all workflows"
_CHARTED = ("correctness", "edits_median", "ttft_p50", "e2el_p50")
_OVERALL_CHARTED = ("safety_incidents", "harmony_failures", "error_rate", "output_tokens_per_s")


@dataclass
class Trend:
    directory: str
    runs: list[dict[str, Any]]  # started, ok, reasons, folder
    baseline: dict[str, Any]  # source, started
    series: dict[str, dict[str, dict[str, list[tuple[float, float]]]]]  # endpoint -> workflow -> metric -> (t, v)
    baseline_values: dict[str, dict[str, float | None]]  # workflow -> metric -> value (gpt-oss at the baseline)
    week: dict[str, Any]  # workflow -> rows, verdict, deciding (medians over the runs)
    reasons: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def findings(self) -> list[Any]:
        return []

    def to_dict(self) -> dict[str, Any]:
        return {"schema": TREND_SCHEMA, "directory": self.directory, "ok": self.ok, "reasons": self.reasons,
                "runs": self.runs, "baseline": self.baseline, "series": self.series,
                "baseline_values": self.baseline_values, "week": self.week, "files": self.files}


def _values(d: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {ALL: overall_values(d)}
    for name, wf in d["correctness"]["workflows"].items():
        out[name] = workflow_values(wf)
    return out


def load_runs(directory: Path) -> tuple[list[tuple[Path, dict[str, Any]]], tuple[str, dict[str, Any]]]:
    """Every run report under `directory` (oldest first), and the baseline: baseline.json there, else the first."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory", code="canary.no_runs",
                         hint="give the state directory of a schedule, e.g. /var/lib/gptoss-canary/NAME")
    runs = [(p, load_baseline(p, what="canary run report")) for p in sorted(directory.rglob("report.json"))]
    if not runs:
        raise UsageError(f"no canary reports (report.json) under {directory}", code="canary.no_runs",
                         hint="point at the folder the runs were written to (canary run --out, or a schedule)")
    runs.sort(key=lambda r: str(r[1].get("started", "")))
    base_file = directory / "baseline.json"
    if base_file.is_file():
        return runs, (str(base_file), load_baseline(base_file))
    return runs, (str(runs[0][0]), runs[0][1])


def _started(path: Path, d: dict[str, Any]) -> datetime:
    """When a run started: an ISO 8601 time with its offset (as canary run writes it), or exit 2 naming it."""
    value = d.get("started")
    try:
        t = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise UsageError(f"run report {path}: 'started' {str(value)[:60]!r} is not a time with its UTC offset",
                         code="canary.bad_report",
                         hint="move that run out of the folder (it was not written by canary run), or fix it")
    return t


def build_trend(directory: Path, *, max_regression: float = 0.20) -> Trend:
    if not (math.isfinite(max_regression) and 0.0 <= max_regression <= 100.0):
        raise UsageError(f"--max-regression {max_regression}: a number from 0 to 100 (0.2 = 20 %)",
                         code="usage.bad_threshold", hint="give --max-regression as a number from 0 to 100")
    runs, (base_src, base) = load_runs(directory)
    starts = [_started(p, d) for p, d in runs]
    order = sorted(range(len(runs)), key=lambda i: starts[i])
    runs, starts = [runs[i] for i in order], [starts[i] for i in order]
    t0 = starts[0]
    series: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}
    per_run: dict[str, dict[str, dict[str, list[float]]]] = {}
    for (_, d), started in zip(runs, starts, strict=True):
        t = (started - t0).total_seconds()
        for label, e in (("gpt-oss", d), ("current", d.get("current"))):
            if not e:
                continue
            for wf, vals in _values(e).items():
                for metric, v in vals.items():
                    if v is not None:
                        series.setdefault(label, {}).setdefault(wf, {}).setdefault(metric, []).append((t, v))
                        per_run.setdefault(label, {}).setdefault(wf, {}).setdefault(metric, []).append(v)
    week: dict[str, Any] = {}
    if "current" in per_run:
        for wf in per_run["gpt-oss"]:
            if wf not in per_run["current"]:
                continue
            med = {lab: {m: statistics.median(per_run[lab][wf][m]) if per_run[lab][wf].get(m) else None
                         for m in per_run["gpt-oss"][wf]} for lab in ENDPOINTS}
            rows = judge_rows(med["gpt-oss"], med["current"], max_regression)
            verdict, why = verdict_of(rows)
            week[wf] = {"rows": rows, "verdict": verdict, "deciding": why}
    trend = Trend(str(directory),
                  [{"started": d["started"], "ok": bool(d.get("ok")), "reasons": list(d.get("reasons") or []),
                    "folder": str(p.parent.relative_to(directory))} for p, d in runs],
                  {"source": base_src, "started": base.get("started")}, series, _values(base), week)
    failed = [r for r in trend.runs if not r["ok"]]
    if failed:
        trend.reasons.append(f"{len(failed)} of {len(runs)} runs failed; first: {failed[0]['started'][:19]} "
                             f"({'; '.join(failed[0]['reasons'])[:300]})")
    trend.reasons += trend_reasons(week)
    return trend


def check_trend_out(out: Path) -> Path:
    """The folder trend.html and trend.json go to: an existing directory (a link to one is fine: systemd's
    DynamicUser state directories are links into /var/lib/private) or a new one; never a file or a dangling
    link. The two files themselves are never written through a link."""
    dangling = out.is_symlink() and not out.exists()
    if dangling or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} is {'a dangling symbolic link' if dangling else 'a file'}, not a directory",
                         code="output.not_directory",
                         hint="give a directory for trend.html and trend.json (it is created when missing)")
    return out


def write_trend(trend: Trend, out: Path) -> dict[str, str]:
    check_trend_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror}", code="output.no_directory",
                         hint="give a directory that can be created here") from None
    files = {"html": out / "trend.html", "json": out / "trend.json"}
    trend.files = {k: str(v) for k, v in files.items()}
    atomic_write(files["json"], json.dumps(trend.to_dict(), indent=1, default=str).encode())
    atomic_write(files["html"], trend_html(trend).encode())
    return trend.files


def _time_axis(span: float) -> tuple[float, str]:
    for div, unit in ((86400.0, "days"), (3600.0, "hours"), (60.0, "minutes")):
        if span >= 3 * div:
            return div, unit
    return 1.0, "seconds"


def _chart(trend: Trend, wf: str, metric: str, div: float, unit: str) -> str:
    m = METRICS[metric]
    scale = 100.0 if m.unit == "ratio" else 1.0
    lines = [svg.Series(label, [(t / div, v * scale) for t, v in trend.series.get(label, {}).get(wf, {}).get(metric, [])],
                        color=svg.PALETTE[i], dashed=label == "current")
             for i, label in enumerate(ENDPOINTS) if trend.series.get(label, {}).get(wf, {}).get(metric)]
    base = trend.baseline_values.get(wf, {}).get(metric)
    y_unit = "%" if m.unit == "ratio" else m.unit
    return svg.line_chart(lines, title=f"{m.name}", x_label=f"{unit} since the first run",
                          y_label=f"{m.name} ({y_unit})",
                          reference=("gpt-oss baseline", base * scale) if base is not None else None,
                          y_counts=m.unit in ("answers", "cases"))


def trend_html(trend: Trend) -> str:
    runs = trend.runs
    first, last = runs[0]["started"][:19].replace("T", " "), runs[-1]["started"][:19].replace("T", " ")
    span = (datetime.fromisoformat(runs[-1]["started"]) - datetime.fromisoformat(runs[0]["started"])).total_seconds()
    div, unit = _time_axis(span)
    passed = sum(r["ok"] for r in runs)
    body = [f"<h1>Canary trend: {len(runs)} runs, {escape(first)} to {escape(last)} UTC</h1>",
            (f'<p class="facts">From {escape(trend.directory)}; baseline {escape(str(trend.baseline["source"]))} '
             f'(started {escape(str(trend.baseline["started"])[:19])}).</p>'),
            verdict_box(trend.ok, "PASSED: every run held its thresholds" if trend.ok else "FAILED", trend.reasons),
            '<div class="tiles">' + tile("runs", str(len(runs))) + tile("runs passed", f"{passed}/{len(runs)}",
                                                                       "good" if passed == len(runs) else "bad")
            + tile("endpoints", " + ".join(e for e in ENDPOINTS if e in trend.series)) + "</div>"]
    if trend.week:
        rows = [[wf, Raw(tag(w["verdict"])), ", ".join(w["deciding"]) or "–"] for wf, w in trend.week.items()]
        body.append("<h2>The week: gpt-oss against the current stack (medians over the runs)</h2>"
                    + table(["workflow", "verdict for gpt-oss", "deciding metrics"], rows))
    workflows = [wf for wf in trend.series.get("gpt-oss", {}) if wf != ALL]
    for wf in workflows:
        body.append(f"<h2>Workflow {escape(wf)}</h2>" + _week_table(trend, wf) + '<div class="charts">'
                    + "".join(_chart(trend, wf, m, div, unit) for m in _CHARTED) + "</div>")
    body.append(f"<h2>All workflows</h2>{_week_table(trend, ALL)}" + '<div class="charts">'
                + "".join(_chart(trend, ALL, m, div, unit) for m in _OVERALL_CHARTED + ("ttft_p50", "e2el_p50"))
                + "</div>")
    body.append("<h2>Runs</h2>" + table(["started (UTC)", "result", "reasons", "reports in"],
                                        [[r["started"][:19].replace("T", " "), Raw(tag("pass" if r["ok"] else "fail")),
                                          "; ".join(r["reasons"]) or "–", r["folder"]] for r in runs],
                                        row_class=["" if r["ok"] else "bad" for r in runs]))
    return page(f"Canary trend ({len(runs)} runs)", "\n".join(body))


def _week_table(trend: Trend, wf: str) -> str:
    rows = []
    w = trend.week.get(wf)
    for r in (w["rows"] if w else []):
        rows.append([r["name"], _fmt(r["gpt_oss"], r["unit"]), _fmt(r["current"], r["unit"]),
                     _fmt(trend.baseline_values.get(wf, {}).get(r["metric"]), r["unit"]), Raw(tag(r["judgement"]))])
    if rows:
        return table(["metric (median over the runs)", "gpt-oss", "current stack", "gpt-oss baseline", "gpt-oss is"],
                     rows, numeric=(1, 2, 3))
    for metric, pts in trend.series.get("gpt-oss", {}).get(wf, {}).items():  # no current stack was compared
        unit = METRICS[metric].unit
        rows.append([METRICS[metric].name, _fmt(statistics.median(v for _, v in pts), unit),
                     _fmt(trend.baseline_values.get(wf, {}).get(metric), unit)])
    return table(["metric (median over the runs)", "gpt-oss", "gpt-oss baseline"], rows, numeric=(1, 2))


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "ratio":
        return f"{v:.0%}"
    return num(v, 2 if unit == "normalised" else 1, "" if unit in ("answers", "cases", "normalised") else unit)
