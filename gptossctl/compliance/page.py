"""The compliance report as one page an auditor reads (`compliance check --html`): the verdict first (pass or
fail, instance, host, time, release and the whole digest of its signed manifest), then each failed check with
its evidence, its fix and its NIST SP 800-53 controls, then warnings, then the passed checks folded away, then
the controls with the checks that support them.

The canary pages' frame (probe.canary.page): one self-contained document, a Content-Security-Policy that
forbids every load, no script, inline CSS. Evidence is host data (unit diffs, journal lines, paths): every
value goes through html.escape here, and the report reaching this module is already redacted (checks.run_checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from html import escape

from gptossctl import __version__
from gptossctl.compliance.result import CheckResult, ComplianceReport
from gptossctl.compliance.rules import RULES
from gptossctl.probe.canary.page import Raw, page, table, tag

_CSS = """
.verdict{padding:16px 20px} .verdict b{font-size:26px;letter-spacing:.5px}
.verdict .why{font-size:15px;margin:2px 0 10px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0;font-size:14px;color:#1d2430}
dl.facts dt{color:#4a5363} dl.facts dd{margin:0;overflow-wrap:anywhere}
.check{background:#fff;border:1px solid #dde1e7;border-left:6px solid #c0392b;border-radius:6px;padding:10px 16px;
margin:12px 0}
.check.warn{border-left-color:#d68910}
.check h3{margin:2px 0 6px;font-size:16px} .check h3 .t{font-weight:400;color:#1d2430}
.meta{font-size:12px;color:#4a5363;margin-bottom:6px}
.lbl{font-size:12px;font-weight:600;color:#4a5363;text-transform:uppercase;letter-spacing:.4px;margin:8px 0 2px}
ul.ev{list-style:none;margin:2px 0;padding:6px 10px;background:#f7f8fa;border-radius:4px}
ul.ev li{font-family:ui-monospace,Menlo,monospace;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere;
padding:1px 0}
.fix{background:#eef4fd;border-left:4px solid #2d6cdf;padding:6px 10px;font-size:13px;overflow-wrap:anywhere}
details{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:5px 0;padding:6px 12px}
details summary{cursor:pointer;font-size:14px} details summary .t{color:#4a5363}
details[open]{padding-bottom:10px}
.tag.warn{background:#fbe3c4;color:#8a4b00} .tag.high{background:#f7d4cf;color:#8e2a1f}
.tag.medium{background:#fbe3c4;color:#8a4b00} .tag.low{background:#e6e9ee;color:#3b4250}
.tag.ctl{background:#e3e9f6;color:#23407a;margin-right:3px}
"""
_WORD = {"pass": "PASS", "fail": "FAIL", "warn": "WARN"}


def to_html(report: ComplianceReport) -> bytes:
    """The page, UTF-8. Written by outputs.write_reports, like every format."""
    failed = [c for c in report.checks if c.status == "fail"]
    warned = [c for c in report.checks if c.status == "warn"]
    passed = [c for c in report.checks if c.status == "pass"]
    body = [_verdict(report, failed, warned),
            f'<h2 id="failed">Failed checks ({len(failed)})</h2>',
            "".join(_card(report, c) for c in failed) or '<p class="note">None.</p>',
            *([f'<h2 id="warned">Warnings ({len(warned)})</h2>', "".join(_card(report, c) for c in warned)]
              if warned else []),
            f'<h2 id="passed">Passed checks ({len(passed)})</h2>',
            "".join(_folded(report, c) for c in passed) or '<p class="note">None.</p>',
            '<h2 id="controls">NIST SP 800-53 controls</h2>', _controls(report),
            f'<p class="note">Written by gptossctl {escape(__version__)} (compliance check --html). The same '
            "report is available as JSON, SARIF, JUnit and a Prometheus textfile; secrets in evidence are "
            "redacted.</p>"]
    title = f"Compliance {'PASS' if report.ok else 'FAIL'}: {report.instance}" + (
        f" on {report.host}" if report.host else "")
    return page(title, "\n".join(body), css=_CSS).encode()


def _verdict(r: ComplianceReport, failed: Sequence[CheckResult], warned: Sequence[CheckResult]) -> str:
    n = len(r.checks)
    if failed:
        why = f"{len(failed)} of {n} checks failed" + (f", {len(warned)} warned" if warned else "")
    else:
        why = f"all {n} checks passed" if not warned else f"no check failed; {len(warned)} of {n} warned"
    host = r.host or "unknown"
    if str(r.root) != "/":
        host += f" (checked the tree under {r.root})"
    release = "none installed" if r.release is None else f"release {r.release}" + (
        f" of bundle {r.bundle} v{r.release}" if r.bundle else "")
    facts = [("Instance", r.instance), ("Host", host),
             ("Checked", r.generated.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
             ("Release", release), ("Bundle digest", f"sha256 {r.bundle_sha256}" if r.bundle_sha256 else "-"),
             ("Checks", f"{r.counts['pass']} passed, {r.counts['warn']} warned, {r.counts['fail']} failed")]
    dl = "".join(f"<dt>{escape(k)}</dt><dd{' class=mono' if k == 'Bundle digest' else ''}>{escape(v)}</dd>"
                 for k, v in facts)
    return (f'<h1>Compliance of {escape(r.instance)}</h1>'
            f'<div class="verdict {"pass" if r.ok else "fail"}"><b>{"PASS" if r.ok else "FAIL"}</b>'
            f'<div class="why">{escape(why)}</div><dl class="facts">{dl}</dl></div>')


def _controls_tags(c: CheckResult) -> str:
    return "".join(f'<span class="tag ctl">{escape(x)}</span>' for x in c.rule.controls)


def _evidence(c: CheckResult) -> str:
    lines = "".join(f"<li>{escape(e)}</li>" for e in c.evidence) or "<li>(no evidence recorded)</li>"
    where = "".join(f"<li>{escape(p)}</li>" for p in c.locations)
    return (f'<div class="lbl">Evidence</div><ul class="ev">{lines}</ul>'
            + (f'<div class="lbl">Where</div><ul class="ev">{where}</ul>' if where else ""))


def _card(r: ComplianceReport, c: CheckResult) -> str:
    """A failed or warned check, open: what, evidence, fix, controls."""
    fix = c.rule.remediation.replace("INSTANCE", r.instance)
    return (f'<section class="check {escape(c.status)}"><h3><span class="tag {escape(c.status)}">'
            f'{_WORD[c.status]}</span> {escape(c.id)} <span class="t">- {escape(c.rule.title)}</span></h3>'
            f'<div class="meta">severity <span class="tag {escape(c.rule.severity)}">{escape(c.rule.severity)}'
            f"</span> &nbsp; NIST SP 800-53 {_controls_tags(c)}</div>"
            f'{_evidence(c)}<div class="lbl">Fix</div><div class="fix">{escape(fix)}</div></section>')


def _folded(r: ComplianceReport, c: CheckResult) -> str:
    return (f'<details><summary><span class="tag pass">PASS</span> {escape(c.id)} '
            f'<span class="t">- {escape(c.rule.title)}</span> {_controls_tags(c)}</summary>{_evidence(c)}</details>')


def _controls(r: ComplianceReport) -> str:
    """Each rule's controls, and each control's checks: the auditor's view of the same report."""
    status = {c.id: c.status for c in r.checks}
    by_control: dict[str, list[str]] = {}
    for rule in RULES:
        for ctl in rule.controls:
            by_control.setdefault(ctl, []).append(rule.id)

    def worst(ids: Sequence[str]) -> str:
        seen = {status.get(i, "not run") for i in ids}
        return next((s for s in ("fail", "warn", "not run") if s in seen), "pass")

    rows = [(ctl, ", ".join(ids), Raw(tag(worst(ids)))) for ctl, ids in
            sorted(by_control.items(), key=lambda kv: (kv[0].split("-")[0], int(kv[0].split("-")[1])))]
    per_rule = [(rule.id, rule.title, ", ".join(rule.controls), Raw(tag(status.get(rule.id, "not run"))))
                for rule in RULES]
    return ("<h3>By control</h3>" + table(("control", "checks", "result"), rows)
            + "<h3>By check</h3>" + table(("check", "what it checks", "controls", "result"), per_rule))
