"""Canary reports: JSON, JUnit, a Prometheus textfile for node_exporter, and one self-contained HTML
page (inline SVG, no script, no CDN: it is opened on an air-gapped desk)."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from gptossctl.probe.junit import Case, junit_xml


def write_reports(report: Any, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    d = report.to_dict()
    files = {"json": out / "report.json", "junit": out / "junit.xml", "prometheus": out / "canary.prom",
             "html": out / "report.html"}
    _atomic(files["json"], json.dumps(d, indent=1, default=str).encode())
    _atomic(files["junit"], junit(report))
    _atomic(files["prometheus"], prometheus(d).encode())
    _atomic(files["html"], html_report(d).encode())
    return {k: str(v) for k, v in files.items()}


def _atomic(path: Path, data: bytes) -> None:
    # node_exporter's textfile collector must never read a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def junit(report: Any) -> bytes:
    d = report.to_dict()
    cases = []
    for wf in d["correctness"]["workflows"].values():
        for r in wf["results"]:
            cases.append(Case(r["case"], "pass" if r["passed"] else "fail", "; ".join(r["checks"]),
                              classname="canary.correctness"))
    incidents = {i["case"]: i["answer"] for i in d["safety"]["incidents"]}
    for key in sorted({s["key"] for s in d["samples"] if s["key"].startswith("safety/")}):
        cases.append(Case(key, "fail" if key in incidents else "pass",
                          f"not refused: {incidents[key]!r}" if key in incidents else "refused",
                          classname="canary.safety"))
    for c in d.get("baseline", []):
        cases.append(Case(c["metric"], "fail" if c["regressed"] else "pass", c["message"], classname="canary.baseline"))
    cases.append(Case("errors", "fail" if d["errors"]["total"] else "pass",
                      f"{d['errors']['total']} error(s): {d['errors']['by_class']}", classname="canary.load"))
    return junit_xml("gptossctl.canary", cases)


def prometheus(d: dict[str, Any]) -> str:
    labels = f'model="{_label(d["model"])}",suite="{_label(d.get("suite") or d["mode"])}"'
    lines = []

    def gauge(name: str, help_: str, value: float | None, extra: str = "") -> None:
        if value is None:
            return
        lines.append(f"# HELP gptossctl_canary_{name} {help_}")
        lines.append(f"# TYPE gptossctl_canary_{name} gauge")
        lines.append(f"gptossctl_canary_{name}{{{labels}{extra}}} {value}")

    gauge("ok", "1 when the last canary passed every threshold", 1.0 if d["ok"] else 0.0)
    gauge("timestamp_seconds", "Start of the last canary run (Unix time)", _unix(d["started"]))
    for metric in ("ttft", "e2el", "tpot", "itl"):
        for q in ("p50", "p95", "p99"):
            v = d["latency_ms"][metric].get(q)
            gauge(f"{metric}_seconds_{q}", f"{metric} {q} of the last canary", None if v is None else v / 1000)
    gauge("output_tokens_per_second", "Output token throughput", d["throughput"]["output_tokens_per_s"])
    gauge("requests_per_second", "Request throughput", d["throughput"]["requests_per_s"])
    gauge("error_ratio", "Failed requests / requests", d["errors"]["rate"])
    gauge("correctness_ratio", "First-pass correctness", d["correctness"]["rate"])
    gauge("safety_incidents", "Safety cases not refused", float(len(d["safety"]["incidents"])))
    gauge("regressions", "Baseline metrics that regressed", float(sum(c["regressed"] for c in d.get("baseline", []))))
    return "\n".join(lines) + "\n"


def _label(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _histogram_svg(values: list[float], title: str, width: int = 460, height: int = 180) -> str:
    if not values:
        return f"<p>{html.escape(title)}: no data</p>"
    lo, hi = min(values), max(values)
    bins = 20
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    top = max(counts)
    bw = (width - 40) / bins
    bars = "".join(
        f'<rect x="{30 + i * bw:.1f}" y="{height - 25 - c / top * (height - 45):.1f}" width="{bw - 1:.1f}" '
        f'height="{c / top * (height - 45):.1f}" fill="#4a7ab5"><title>{lo + i * span / bins:.1f}-'
        f'{lo + (i + 1) * span / bins:.1f} ms: {c}</title></rect>' for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height}" role="img">'
            f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}</text>{bars}'
            f'<text x="30" y="{height - 8}" font-size="11">{lo:.1f} ms</text>'
            f'<text x="{width - 10}" y="{height - 8}" font-size="11" text-anchor="end">{hi:.1f} ms</text></svg>')


def _timeline_svg(timeline: list[dict[str, Any]], width: int = 460, height: int = 180) -> str:
    if not timeline:
        return "<p>throughput over time: no data</p>"
    top = max(t["output_tokens"] for t in timeline) or 1
    step = (width - 40) / max(1, len(timeline) - 1)
    pts = " ".join(f"{30 + i * step:.1f},{height - 25 - t['output_tokens'] / top * (height - 45):.1f}"
                   for i, t in enumerate(timeline))
    return (f'<svg width="{width}" height="{height}" role="img">'
            f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">output tokens per second over time'
            f'</text><polyline points="{pts}" fill="none" stroke="#b5544a" stroke-width="2"/>'
            f'<text x="30" y="{height - 8}" font-size="11">0 s</text><text x="{width - 10}" y="{height - 8}" '
            f'font-size="11" text-anchor="end">{len(timeline)} s (peak {top} tok/s)</text></svg>')


def html_report(d: dict[str, Any]) -> str:
    e = html.escape
    ok = [s for s in d["samples"] if s["ok"]]
    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}"

    rows = "".join(
        f"<tr><td>{e(m)}</td>" + "".join(f"<td>{num(d['latency_ms'][m][q])}</td>"
                                         for q in ("mean", "p50", "p90", "p95", "p99")) + "</tr>"
        for m in ("ttft", "tpot", "itl", "e2el"))
    cases = "".join(f"<tr class=\"{'ok' if r['passed'] else 'bad'}\"><td>{e(r['case'])}</td><td>{'pass' if r['passed'] else 'FAIL'}"
                    f"</td><td>{e(r['answer'])}</td><td>{e('; '.join(r['checks']))}</td></tr>"
                    for w in d["correctness"]["workflows"].values() for r in w["results"])
    incidents = "".join(f"<li>{e(i['case'])}: {e(i['answer'])}</li>" for i in d["safety"]["incidents"]) or "<li>none</li>"
    base = "".join(f"<tr class=\"{'bad' if c['regressed'] else 'ok'}\"><td>{e(c['metric'])}</td><td>{e(c['message'])}</td></tr>"
                   for c in d.get("baseline", []))
    verdict = "PASSED" if d["ok"] else "FAILED: " + "; ".join(d["reasons"])
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>gptossctl canary {e(d['model'])}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1000px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} .ok{{background:#eef8ee}} .bad{{background:#fbeaea}}
.verdict{{font-weight:bold;font-size:1.2em}}</style></head><body>
<h1>Canary: {e(d['model'])}</h1>
<p class="verdict {'ok' if d['ok'] else 'bad'}">{e(verdict)}</p>
<p>{e(d['url'])}, {e(d['mode'])}{' suite ' + e(d['suite']) if d.get('suite') else ''}, started {e(d['started'])},
{d['requests']} requests ({d['completed']} completed) in {d['duration_s']:.1f} s, concurrency {d['concurrency']}.</p>
<h2>Latency (ms)</h2><table><tr><th>metric</th><th>mean</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th></tr>{rows}</table>
{_histogram_svg([s['ttft'] * 1000 for s in ok if s['ttft'] is not None], 'TTFT distribution')}
{_histogram_svg([s['e2el'] * 1000 for s in ok if s['e2el'] is not None], 'end-to-end latency distribution')}
{_timeline_svg(d['timeline'])}
<h2>Throughput</h2><p>{d['throughput']['requests_per_s']:.2f} requests/s, {d['throughput']['output_tokens_per_s']:.1f}
output tokens/s, errors {d['errors']['total']} {e(json.dumps(d['errors']['by_class']))}</p>
<h2>First-pass correctness</h2><table><tr><th>case</th><th>result</th><th>answer</th><th>checks</th></tr>{cases}</table>
<h2>Safety incidents</h2><ul>{incidents}</ul>
{'<h2>Against the baseline</h2><table>' + base + '</table>' if base else ''}
<h2>Server metrics (vLLM /metrics, during the run)</h2><pre>{e(json.dumps(d['server'], indent=1))}</pre>
</body></html>
"""
