"""Canary reports: JSON, JUnit, a Prometheus textfile for node_exporter, and one self-contained HTML
page (inline SVG, no script, no external reference: it is opened on an air-gapped desk) that reads like a
dashboard: the verdict first, tiles, the current stack side by side, one section per workflow, safety
incidents with prompt, answer, rule and workflow, then latency charts with axes and the server's metrics
as tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, Protocol

from gptossctl.fsutil import atomic_write  # node_exporter must never read a half-written file
from gptossctl.probe.canary import svg
from gptossctl.probe.canary.page import Raw, interval_text, num, page, pct, table, tag, tile, verdict_box
from gptossctl.probe.junit import Case, junit_xml

MIN_TIMELINE_SECONDS = 5  # a shorter run has too few points for a throughput-over-time chart


class HasReport(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def write_reports(report: HasReport, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    d = report.to_dict()
    files = {"json": out / "report.json", "junit": out / "junit.xml", "prometheus": out / "canary.prom",
             "html": out / "report.html"}
    atomic_write(files["json"], json.dumps(d, indent=1, default=str).encode())
    atomic_write(files["junit"], junit(d))
    atomic_write(files["prometheus"], prometheus(d).encode())
    atomic_write(files["html"], html_report(d).encode())
    return {k: str(v) for k, v in files.items()}


def _endpoints(d: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "gpt-oss", d
    if d.get("current"):
        yield "current", d["current"]


def junit(d: dict[str, Any]) -> bytes:
    cases = []
    for label, e in _endpoints(d):
        cls = "canary" if label == "gpt-oss" else "canary.current"
        for wf in e["correctness"]["workflows"].values():
            for r in wf["results"]:
                edit = f"; edits-to-accept {r['edit']['normalised']:.2f} ({r['edit']['chars']} chars)" if "edit" in r else ""
                cases.append(Case(r["case"], "pass" if r["passed"] else "fail", "; ".join(r["checks"]) + edit,
                                  classname=f"{cls}.correctness"))
        incidents = {i["case"]: i for i in e["safety"]["incidents"]}
        for key in sorted({s["key"] for s in e["samples"] if s["key"].startswith("safety/")} | set(incidents)):
            i = incidents.get(key)
            cases.append(Case(key, "fail" if i else "pass",
                              f"{i['why']} (rule: {i['rule']}): {i['answer']!r}" if i else "refused",
                              classname=f"{cls}.safety"))
        h = e["harmony"]
        cases.append(Case("harmony", "fail" if h["failed"] else "pass",
                          f"{h['failed']} of {h['checked']} answers: leaked markers {h['leaked_marker']}, bad tool "
                          f"calls {h['bad_tool_call']}, empty final answers {h['empty_final']}", classname=f"{cls}.harmony"))
        cases.append(Case("errors", "fail" if e["errors"]["total"] else "pass",
                          f"{e['errors']['total']} error(s): {e['errors']['by_class']}", classname=f"{cls}.load"))
    for name, wf in (d.get("side_by_side") or {}).get("workflows", {}).items():
        cases.append(Case(name, "fail" if wf["verdict"] in ("worse", "mixed") else "pass",
                          f"gpt-oss against the current stack: {wf['verdict']}"
                          + (f" ({', '.join(wf['deciding'])})" if wf["deciding"] else ""),
                          classname="canary.side_by_side"))
    for c in d.get("baseline", []):
        cases.append(Case(c["metric"], "fail" if c["regressed"] else "pass", c["message"], classname="canary.baseline"))
    return junit_xml("gptossctl.canary", cases)


def prometheus(d: dict[str, Any]) -> str:
    """The textfile for node_exporter: each metric family once, its samples (both endpoints) together."""
    families: dict[str, list[str]] = {}

    def gauge(name: str, help_: str, value: float | None, labels: dict[str, str]) -> None:
        if value is None:
            return
        lines = families.setdefault(name, [f"# HELP gptossctl_canary_{name} {help_}",
                                           f"# TYPE gptossctl_canary_{name} gauge"])
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"gptossctl_canary_{name}{{{text}}} {float(value)}")

    base = {"suite": str(d.get("suite") or d["mode"])}
    gauge("ok", "1 when the last canary passed every threshold", 1.0 if d["ok"] else 0.0, base)
    gauge("timestamp_seconds", "Start of the last canary run (Unix time)", _unix(d["started"]), base)
    gauge("regressions", "Baseline metrics that regressed", float(sum(c["regressed"] for c in d.get("baseline", []))),
          base)
    for label, e in _endpoints(d):
        _endpoint_gauges(gauge, e, {"model": str(e["model"]), **base, "endpoint": label})
    return "\n".join(line for lines in families.values() for line in lines) + "\n"


def _endpoint_gauges(gauge: Any, e: dict[str, Any], labels: dict[str, str]) -> None:
    for metric in ("ttft", "e2el", "tpot", "itl"):
        for q in ("p50", "p95", "p99"):
            v = e["latency_ms"][metric].get(q)
            gauge(f"{metric}_seconds_{q}", f"{metric} {q} of the last canary", None if v is None else v / 1000, labels)
    gauge("output_tokens_per_second", "Output token throughput", e["throughput"]["output_tokens_per_s"], labels)
    gauge("requests_per_second", "Request throughput", e["throughput"]["requests_per_s"], labels)
    gauge("error_ratio", "Failed requests / requests", e["errors"]["rate"], labels)
    gauge("correctness_ratio", "First-pass correctness", e["correctness"]["rate"], labels)
    gauge("safety_incidents", "Safety cases not refused", float(len(e["safety"]["incidents"])), labels)
    for kind in ("leaked_marker", "bad_tool_call", "empty_final"):
        gauge(f"harmony_{kind}", f"Answers with harmony failure {kind}", float(e["harmony"][kind]), labels)
    for name, s in e["edits_to_accept"]["workflows"].items():
        wl = {**labels, "workflow": name}
        gauge("edits_to_accept_median", "Median normalised edit distance to the nearest reference", s["median"], wl)
        gauge("edits_to_accept_p90", "p90 normalised edit distance to the nearest reference", s["p90"], wl)
        gauge("edits_to_accept_no_edit_ratio", "Share of answers accepted with no edit", s["no_edit_share"], wl)


def _label(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# ---------------------------------------------------------------- HTML


def html_report(d: dict[str, Any]) -> str:
    title = f"Canary {d.get('suite') or d['mode']}: {d['model']}"
    body = [f"<h1>{escape(title)}</h1>", _facts(d),
            verdict_box(d["ok"], "PASSED: every threshold held" if d["ok"] else "FAILED", d["reasons"]),
            _tiles(d)]
    if d.get("side_by_side"):
        body.append(_side_by_side(d))
    body += [_workflows(d), _incidents(d), _harmony(d), _latency(d), _errors(d), _baseline(d), _server(d)]
    return page(title, "\n".join(b for b in body if b))


def _facts(d: dict[str, Any]) -> str:
    workload = (f"suite <b>{escape(str(d['suite']))}</b>" if d.get("suite") else
                f"random prompts of {d['random']['input_len']} tokens, {d['random']['output_len']} out"
                + (" (--ignore-eos)" if d["random"]["ignore_eos"] else ""))
    cur = f" against the current stack <b>{escape(d['current']['model'])}</b> at {escape(d['current']['url'])}" \
        if d.get("current") else ""
    return (f'<p class="facts">{workload} on <b>{escape(d["model"])}</b> at {escape(d["url"])}{cur}; started '
            f'{escape(d["started"][:19].replace("T", " "))} UTC, {d["duration_s"]:.1f} s, {d["requests"]} requests '
            f'({d["completed"]} completed), concurrency {d["concurrency"]}'
            + (f", Poisson rate {d['rate']}/s" if d.get("rate") else "") + ".</p>")


def _tiles(d: dict[str, Any]) -> str:
    e = d["edits_to_accept"]["overall"]
    c = d["correctness"]
    incidents = len(d["safety"]["incidents"])
    tiles = []
    if c["rate"] is not None:
        tiles.append(tile("first-pass correctness", f"{c['passed']}/{c['cases']} ({pct(c['rate'])})",
                          "good" if c["passed"] == c["cases"] else "bad"))
    if e["cases"]:
        tiles.append(tile("edits-to-accept, median (0 = as is)", num(e["median"], 2)))
        tiles.append(tile("accepted with no edit", pct(e["no_edit_share"])))
    if d["safety"]["cases"]:
        tiles.append(tile("safety incidents", str(incidents), "bad" if incidents else "good"))
    if d["harmony"]["checked"]:
        tiles.append(tile("harmony failures", str(d["harmony"]["failed"]), "bad" if d["harmony"]["failed"] else "good"))
    lat = d["latency_ms"]
    tiles += [tile("TTFT, median", num(lat["ttft"]["p50"], 1, "ms")),
              tile("end-to-end, median", num(lat["e2el"]["p50"], 1, "ms")),
              tile("output throughput", num(d["throughput"]["output_tokens_per_s"], 1, "tok/s")),
              tile("failed requests", str(d["errors"]["total"]), "bad" if d["errors"]["total"] else "good")]
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _value(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "ratio":
        return pct(v)
    if unit == "normalised":
        return num(v, 2)
    return num(v, 1 if unit in ("ms", "tokens/s") else 0)


def _sbs_table(rows: list[dict[str, Any]]) -> str:
    cells = [[r["name"], _value(r["gpt_oss"], r["unit"]), _value(r["current"], r["unit"]),
              "–" if r["difference"] is None else (("+" if r["difference"] > 0 else "") + _value(r["difference"], r["unit"])),
              interval_text(r), Raw(tag(r["judgement"]))] for r in rows]
    cls = ["bad" if r["judgement"] == "worse" else "good" if r["judgement"] == "better" else "" for r in rows]
    return table(["metric", "gpt-oss", "current stack", "difference", "change, 95 % interval", "gpt-oss is"], cells,
                 numeric=(1, 2, 3), row_class=cls)


def _side_by_side(d: dict[str, Any]) -> str:
    s = d["side_by_side"]
    verdicts = [[name, Raw(tag(wf["verdict"])), ", ".join(wf["deciding"]) or "–"] for name, wf in s["workflows"].items()]
    return ("<h2>gpt-oss against the current stack</h2>"
            f'<p class="note">The same requests went to both, at the same time. Latency and throughput: the change '
            f'with its {s.get("confidence", 0.95):.0%} bootstrap interval; "same" only when the whole interval lies '
            f'within ±{s["max_regression"]:.0%}, worse or better only when it lies wholly beyond, inconclusive when it '
            f'straddles the edge, and not enough data under {s.get("min_samples", "–")} answers per endpoint. '
            f'Quality metrics on any difference (edits beyond 0.05).</p>'
            + table(["workflow", "verdict for gpt-oss", "deciding metrics"], verdicts)
            + "<h3>All workflows</h3>" + _sbs_table(s["overall"]["rows"]))


def _workflows(d: dict[str, Any]) -> str:
    wfs = d["correctness"]["workflows"]
    if not wfs:
        return ""
    out = ["<h2>Workflows</h2>"]
    sbs = (d.get("side_by_side") or {}).get("workflows", {})
    for name, wf in wfs.items():
        e = wf["edits_to_accept"]
        head = (f"<h3>{escape(name)}: {wf['passed']}/{wf['cases']} correct first time"
                + (f", edits-to-accept median {num(e['median'], 2)}, p90 {num(e['p90'], 2)}, "
                   f"{pct(e['no_edit_share'])} accepted with no edit" if e["cases"] else "")
                + (f" {tag(sbs[name]['verdict'])}" if name in sbs else "") + "</h3>")
        rows = [[r["case"].split("/", 1)[1], Raw(tag("pass" if r["passed"] else "fail")), Raw(_answer(r["answer"])),
                 num(r["edit"]["normalised"], 2) + f" ({r['edit']['chars']} chars)" if "edit" in r else "–",
                 "; ".join(r["checks"])] for r in wf["results"]]
        out.append(head + table(["case", "result", "answer", "edits-to-accept", "checks"], rows,
                                row_class=["" if r["passed"] else "bad" for r in wf["results"]]))
        if name in sbs:
            out.append(_sbs_table(sbs[name]["rows"]))
    return "".join(out)


def _answer(text: str) -> str:
    return f'<div class="answer">{escape(text) if text.strip() else "<i>(empty)</i>"}</div>'


def _incidents(d: dict[str, Any]) -> str:
    s = d["safety"]
    if not s["cases"]:
        return ""
    head = f"<h2>Safety incidents: {len(s['incidents'])} of {s['cases']} cases</h2>"
    if not s["incidents"]:
        return head + f'<p class="note">Every one of the {s["cases"]} safety prompts was refused.</p>'
    rows = [[i["case"], i["workflow"], i["rule"], Raw(_answer(i["prompt"])), Raw(_answer(i["answer"])), i["why"]]
            for i in s["incidents"]]
    return head + table(["case", "workflow", "rule", "prompt", "answer", "why"], rows)


def _harmony(d: dict[str, Any]) -> str:
    h = d["harmony"]
    if not h["checked"]:
        return ""
    counts = table(["check", "answers failing"], [["control markers leaked into content or reasoning", h["leaked_marker"]],
                                                  ["tool call arguments not JSON", h["bad_tool_call"]],
                                                  ["empty final answer", h["empty_final"]]], numeric=(1,))
    rows = [[a["case"], ", ".join(a["failures"]), Raw(_answer(a["answer"])), "; ".join(a["detail"])] for a in h["answers"]]
    return (f"<h2>Harmony conformance: {h['failed']} of {h['checked']} answers fail</h2>" + counts
            + (table(["case", "failures", "answer", "detail"], rows) if rows else ""))


def _latency(d: dict[str, Any]) -> str:
    names = {"ttft": "time to first token", "tpot": "time per output token", "itl": "inter-token latency",
             "e2el": "end-to-end latency"}
    rows = []
    for label, e in _endpoints(d):
        for m, title in names.items():
            s = e["latency_ms"][m]
            rows.append(([label] if d.get("current") else []) + [title, s["n"]]
                        + [num(s[q]) for q in ("mean", "p50", "p90", "p95", "p99")])
    heads = (["endpoint"] if d.get("current") else []) + ["metric", "samples", "mean", "p50", "p90", "p95", "p99"]
    ok = [s for s in d["samples"] if s["ok"]]
    charts = [svg.histogram([s["ttft"] * 1000 for s in ok if s["ttft"] is not None],
                            title="Time to first token", x_label="TTFT (ms)"),
              svg.histogram([s["e2el"] * 1000 for s in ok if s["e2el"] is not None],
                            title="End-to-end latency", x_label="E2EL (ms)")]
    tl = d["timeline"]
    if len(tl) >= MIN_TIMELINE_SECONDS:
        charts.append(svg.line_chart([svg.Series("gpt-oss", [(t["second"], t["output_tokens"]) for t in tl])],
                                     title="Output throughput over the run", x_label="time since start (s)",
                                     y_label="output tokens / s"))
    note = "" if len(tl) >= MIN_TIMELINE_SECONDS else \
        f'<p class="note">The run lasted {d["duration_s"]:.1f} s: too short for a throughput-over-time chart.</p>'
    thr = "; ".join(f'{label + ": " if d.get("current") else ""}{e["throughput"]["requests_per_s"]:.2f} requests/s, '
                    f'{e["throughput"]["output_tokens_per_s"]:.1f} output tokens/s, '
                    f'{e["throughput"]["total_tokens_per_s"]:.1f} total tokens/s'
                    + (f' over {e["throughput"]["span_s"]:.1f} s' if "span_s" in e["throughput"] else "")
                    for label, e in _endpoints(d))
    return ("<h2>Latency and throughput</h2>"
            f'<p class="note">Measured like <code>vllm bench serve</code> (milliseconds; TTFT at the first streamed '
            f'chunk). Throughput, each endpoint over the time from its first request to its last answer: {escape(thr)}.</p>'
            + table(heads, rows, numeric=tuple(range(len(heads) - 6, len(heads))))
            + f'<div class="charts">{"".join(charts)}</div>' + note)


def _errors(d: dict[str, Any]) -> str:
    rows = [[label, cls, n] for label, e in _endpoints(d) for cls, n in e["errors"]["by_class"].items()]
    if not rows:
        return "<h2>Failed requests</h2><p class=\"note\">None: every request completed.</p>"
    examples = [ex for _, e in _endpoints(d) for ex in e["errors"]["examples"]]
    return ("<h2>Failed requests</h2>" + table(["endpoint", "class", "requests"], rows, numeric=(2,))
            + "".join(f'<p class="mono">{escape(x)}</p>' for x in examples))


def _baseline(d: dict[str, Any]) -> str:
    if "baseline" not in d:
        return ""
    rows = [[c["metric"], num(c["baseline"], 2), num(c["current"], 2), Raw(tag("worse" if c["regressed"] else "same")),
             c["message"]] for c in d["baseline"]]
    return "<h2>Against the baseline</h2>" + table(["metric", "baseline", "this run", "", "detail"], rows,
                                                     numeric=(1, 2), row_class=["bad" if c["regressed"] else ""
                                                                                for c in d["baseline"]])


_HIST_NAMES = {"vllm:time_to_first_token_seconds": "time to first token",
               "vllm:e2e_request_latency_seconds": "end-to-end request latency",
               "vllm:inter_token_latency_seconds": "inter-token latency",
               "vllm:request_queue_time_seconds": "queue time"}


def _server(d: dict[str, Any]) -> str:
    out = ["<h2>The server's own metrics (vLLM /metrics, during the run)</h2>"]
    for label, e in _endpoints(d):
        s = e.get("server") or {}
        hist = [[_HIST_NAMES.get(k, k), num(v["count"], 0), num(v["mean_ms"]), num(v["p50_ms"]), num(v["p95_ms"])]
                for k, v in s.items() if isinstance(v, dict) and "count" in v]
        counters = [[k.removeprefix("vllm:"), num(v, 0)] for k, v in s.items() if isinstance(v, int | float)]
        gauges = [[k.removeprefix("vllm:"), num(v["max"], 2), num(v["last"], 2)]
                  for k, v in s.items() if isinstance(v, dict) and "max" in v]
        out.append(f"<h3>{escape(label)}: {escape(e['url'])}</h3>")
        if not (hist or counters or gauges):
            out.append('<p class="note">No vLLM metrics at /metrics (not a vLLM server, or metrics disabled).</p>')
            continue
        out.append(table(["histogram (ms)", "requests", "mean", "p50", "p95"], hist, numeric=(1, 2, 3, 4))
                   + '<div class="charts">'
                   + table(["counter (change over the run)", "value"], counters, numeric=(1,))
                   + table(["gauge", "max", "last"], gauges, numeric=(1, 2)) + "</div>")
        if s.get("absent"):
            out.append(f'<p class="note">Series this vLLM does not export: {escape(", ".join(s["absent"]))}.</p>')
    return "".join(out)
