"""A week of canary runs on one page: each metric over time per workflow and per endpoint (gpt-oss and the
current stack), the baseline as a reference line, the week's side-by-side verdict per workflow and the final
verdict. Written as trend.html (self-contained: inline SVG, no script, no external reference) and trend.json
(`gptossctl.canary-trend/2`).

The page names what was measured (model, URL and suite of each endpoint). Runs of another shape than most
(suite or workload, model, current stack's model, concurrency, rate) are marked and left out of the charts
and the week's verdict, never mixed in. The week's verdict per metric is a bootstrap interval of the change
in the median over the runs (compare.py's rules; at least MIN_RUNS runs, else "not enough data"). Time is in
hours since the first run (days from three days on).

/2 over /1: `model`, `url`, `suite`, `current`, `shape`; per run `shape`, `differs` and `hours`; series
times in hours (were seconds); week rows with interval, tolerance and sample counts."""

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
    Samples,
    judge_rows,
    overall_values,
    trend_reasons,
    verdict_of,
    workflow_values,
)
from gptossctl.probe.canary.page import Raw, interval_text, num, page, table, tag, tile, verdict_box
from gptossctl.probe.canary.stats import median

TREND_SCHEMA = "gptossctl.canary-trend/2"
MIN_RUNS = 3  # runs per endpoint below which the week's verdict on a metric is "not enough data"
ENDPOINTS = ("gpt-oss", "current")
ALL = "all workflows"
_CHARTED = ("correctness", "edits_median", "ttft_p50", "e2el_p50")
_OVERALL_CHARTED = ("safety_incidents", "harmony_failures", "error_rate", "output_tokens_per_s")


@dataclass
class Trend:
    directory: str
    runs: list[dict[str, Any]]  # started, hours, ok, reasons, folder, shape, differs (empty: counted)
    baseline: dict[str, Any]  # source, started
    series: dict[str, dict[str, dict[str, list[tuple[float, float]]]]]  # endpoint -> workflow -> metric -> (t, v)
    baseline_values: dict[str, dict[str, float | None]]  # workflow -> metric -> value (gpt-oss at the baseline)
    week: dict[str, Any]  # workflow -> rows, verdict, deciding (medians over the runs)
    shape: dict[str, Any] = field(default_factory=dict)  # the runs counted: workload, models, concurrency, rate
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> model, url (latest counted run)
    reasons: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def findings(self) -> list[Any]:
        return []

    def to_dict(self) -> dict[str, Any]:
        ours = self.endpoints.get("gpt-oss", {})
        return {"schema": TREND_SCHEMA, "directory": self.directory, "ok": self.ok, "reasons": self.reasons,
                "model": ours.get("model"), "url": ours.get("url"), "suite": self.shape.get("workload"),
                "current": self.endpoints.get("current"), "shape": self.shape, "min_runs": MIN_RUNS,
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


def shape_of(d: dict[str, Any]) -> dict[str, Any]:
    """What makes runs comparable: the workload, the models, the concurrency and the arrival rate."""
    rnd = d.get("random") or {}
    workload = d.get("suite") or (f"random {rnd.get('input_len')} tokens in, {rnd.get('output_len')} out"
                                  if d.get("mode") == "random" else str(d.get("mode")))
    return {"workload": workload, "model": d.get("model"), "current_model": (d.get("current") or {}).get("model"),
            "concurrency": d.get("concurrency"), "rate": d.get("rate")}


_SHAPE_NAMES = {"workload": "suite", "model": "model", "current_model": "current stack's model",
                "concurrency": "concurrency", "rate": "rate"}


def _reference_shape(shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """The shape most runs have; on a tie, the latest run's."""
    keys = [json.dumps(s, sort_keys=True) for s in shapes]
    best = max(range(len(keys)), key=lambda i: (keys.count(keys[i]), i))
    return shapes[best]


def _differs(shape: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    return [f"{_SHAPE_NAMES[k]} {shape[k]} (the others: {ref[k]})" for k in ref if shape.get(k) != ref[k]]


def build_trend(directory: Path, *, max_regression: float = 0.20) -> Trend:
    if not (math.isfinite(max_regression) and 0.0 <= max_regression <= 100.0):
        raise UsageError(f"--max-regression {max_regression}: a number from 0 to 100 (0.2 = 20 %)",
                         code="usage.bad_threshold", hint="give --max-regression as a number from 0 to 100")
    runs, (base_src, base) = load_runs(directory)
    starts = [_started(p, d) for p, d in runs]
    order = sorted(range(len(runs)), key=lambda i: starts[i])
    runs, starts = [runs[i] for i in order], [starts[i] for i in order]
    t0 = starts[0]
    shapes = [shape_of(d) for _, d in runs]
    ref = _reference_shape(shapes)
    series: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}
    per_run: dict[str, dict[str, dict[str, list[float]]]] = {}
    endpoints: dict[str, dict[str, Any]] = {}
    for (_, d), started, shape in zip(runs, starts, shapes, strict=True):
        if _differs(shape, ref):
            continue  # another shape: marked in the runs, never mixed into the series or the verdict
        hours = (started - t0).total_seconds() / 3600
        for label, e in (("gpt-oss", d), ("current", d.get("current"))):
            if not e:
                continue
            endpoints[label] = {"model": e.get("model"), "url": e.get("url")}
            for wf, vals in _values(e).items():
                if d.get("schema") != "gptossctl.canary-report/3" and d.get("current"):
                    vals.pop("output_tokens_per_s", None)  # before /3 both endpoints showed the run's throughput
                for metric, v in vals.items():
                    if v is not None:
                        series.setdefault(label, {}).setdefault(wf, {}).setdefault(metric, []).append((hours, v))
                        per_run.setdefault(label, {}).setdefault(wf, {}).setdefault(metric, []).append(v)
    week: dict[str, Any] = {}
    if "current" in per_run and "gpt-oss" in per_run:
        for wf in per_run["gpt-oss"]:
            if wf not in per_run["current"]:
                continue
            ours, theirs = per_run["gpt-oss"][wf], per_run["current"][wf]
            med = {lab: {m: statistics.median(per_run[lab][wf][m]) if per_run[lab][wf].get(m) else None
                         for m in ours} for lab in ENDPOINTS}
            samples: Samples = {m: (ours[m], theirs[m], median) for m in ours if theirs.get(m)}
            rows = judge_rows(med["gpt-oss"], med["current"], max_regression, samples=samples, min_samples=MIN_RUNS)
            verdict, why = verdict_of(rows)
            week[wf] = {"rows": rows, "verdict": verdict, "deciding": why}
    trend = Trend(str(directory),
                  [{"started": d["started"], "hours": (started - t0).total_seconds() / 3600,
                    "ok": bool(d.get("ok")), "reasons": list(d.get("reasons") or []),
                    "folder": str(p.parent.relative_to(directory)), "shape": shape, "differs": _differs(shape, ref)}
                   for (p, d), started, shape in zip(runs, starts, shapes, strict=True)],
                  {"source": base_src, "started": base.get("started")}, series, _values(base), week,
                  shape=ref, endpoints=endpoints)
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


def _time_axis(span_hours: float) -> tuple[float, str]:
    """Hours since the first run, or days from three days on (series are kept in hours)."""
    return (24.0, "days") if span_hours >= 72 else (1.0, "hours")


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
    div, unit = _time_axis(runs[-1]["hours"])
    passed = sum(r["ok"] for r in runs)
    other = [r for r in runs if r["differs"]]
    body = [f"<h1>Canary trend: {escape(what_was_measured(trend))}</h1>",
            (f'<p class="facts">{len(runs)} runs, {escape(first)} to {escape(last)} UTC '
             f'({escape(_duration(runs[-1]["hours"]))}); concurrency {escape(str(trend.shape.get("concurrency")))}'
             + (f', Poisson rate {escape(str(trend.shape["rate"]))}/s' if trend.shape.get("rate") else "")
             + f'. From {escape(trend.directory)}; baseline {escape(str(trend.baseline["source"]))} '
             f'(started {escape(str(trend.baseline["started"])[:19])}).</p>'),
            verdict_box(trend.ok, "PASSED: every run held its thresholds" if trend.ok else "FAILED", trend.reasons),
            '<div class="tiles">' + tile("runs", str(len(runs))) + tile("runs passed", f"{passed}/{len(runs)}",
                                                                       "good" if passed == len(runs) else "bad")
            + tile("endpoints", " + ".join(e for e in ENDPOINTS if e in trend.series))
            + (tile("runs of another shape, left out", str(len(other)), "bad") if other else "") + "</div>"]
    if other:
        body.append(f'<p class="note">{len(other)} run(s) had another shape than the others and are left out of '
                    "the charts and the week's verdict (marked in the table of runs): "
                    + escape("; ".join(f'{r["started"][:19]}: {", ".join(r["differs"])}' for r in other[:5])) + "</p>")
    if trend.week:
        rows = [[wf, Raw(tag(w["verdict"])), ", ".join(w["deciding"]) or "–"] for wf, w in trend.week.items()]
        body.append("<h2>The week: gpt-oss against the current stack</h2>"
                    f'<p class="note">Per metric, the median over the runs; latency and throughput "same" only when the '
                    f"95 % bootstrap interval of the change lies within ±{_pct_band(trend)}, worse or better only "
                    f"when it lies wholly beyond; fewer than {MIN_RUNS} runs: not enough data.</p>"
                    + table(["workflow", "verdict for gpt-oss", "deciding metrics"], rows))
    workflows = [wf for wf in trend.series.get("gpt-oss", {}) if wf != ALL]
    for wf in workflows:
        body.append(f"<h2>Workflow {escape(wf)}</h2>" + _week_table(trend, wf) + '<div class="charts">'
                    + "".join(_chart(trend, wf, m, div, unit) for m in _CHARTED) + "</div>")
    body.append(f"<h2>All workflows</h2>{_week_table(trend, ALL)}" + '<div class="charts">'
                + "".join(_chart(trend, ALL, m, div, unit) for m in _OVERALL_CHARTED + ("ttft_p50", "e2el_p50"))
                + "</div>")
    body.append("<h2>Runs</h2>" + table(["started (UTC)", f"{unit} since the first", "result", "reasons", "shape",
                                         "reports in"],
                                        [[r["started"][:19].replace("T", " "), f'{r["hours"] / div:.1f}',
                                          Raw(tag("pass" if r["ok"] else "fail")), "; ".join(r["reasons"]) or "–",
                                          ("another shape, left out: " + ", ".join(r["differs"])) if r["differs"]
                                          else "as the others", r["folder"]] for r in runs],
                                        numeric=(1,), row_class=["" if r["ok"] else "bad" for r in runs]))
    return page(f"Canary trend ({len(runs)} runs)", "\n".join(body))


def what_was_measured(trend: Trend) -> str:
    """'suite S on MODEL at URL against MODEL at URL' for the headline and the CLI."""
    ours, cur = trend.endpoints.get("gpt-oss", {}), trend.endpoints.get("current")
    return (f"suite {trend.shape.get('workload')} on {ours.get('model')} at {ours.get('url')}"
            + (f" against the current stack {cur.get('model')} at {cur.get('url')}" if cur else ""))


def _duration(hours: float) -> str:
    return f"{hours / 24:.1f} days" if hours >= 72 else f"{hours:.1f} hours" if hours >= 1 else f"{hours:.2f} hours"


def _pct_band(trend: Trend) -> str:
    w = next(iter(trend.week.values()), None)
    tol = next((r["tolerance"] for r in (w["rows"] if w else []) if r["relative"]), None)
    return "the tolerance" if tol is None else f"{tol:.0%}"


def _week_table(trend: Trend, wf: str) -> str:
    rows = []
    w = trend.week.get(wf)
    for r in (w["rows"] if w else []):
        rows.append([r["name"], _fmt(r["gpt_oss"], r["unit"]), _fmt(r["current"], r["unit"]),
                     _fmt(trend.baseline_values.get(wf, {}).get(r["metric"]), r["unit"]), interval_text(r),
                     Raw(tag(r["judgement"]))])
    if rows:
        return table(["metric (median over the runs)", "gpt-oss", "current stack", "gpt-oss baseline",
                      "change, 95 % interval (runs)", "gpt-oss is"], rows, numeric=(1, 2, 3))
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
