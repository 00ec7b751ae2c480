"""The report in the formats auditors and schedulers consume: JSON (to_dict), JUnit, SARIF 2.1.0, a
Prometheus textfile for node_exporter and an HTML page for people (compliance.page).

FORMATS is the one table of them: a format is one row (its name, the option that asks for it, its file mode
and the function that renders a report to bytes) and one option on `compliance check`; write_reports writes
every one asked for, atomically."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.compliance.page import to_html
from gptossctl.compliance.result import ComplianceReport
from gptossctl.compliance.rules import RULES
from gptossctl.fsutil import atomic_write
from gptossctl.probe.junit import Case, junit_xml

REPORT_MODE = 0o600  # JSON, SARIF and JUnit reports: evidence names host details (secrets are redacted upstream)


def to_junit(report: ComplianceReport) -> bytes:
    cases = [Case(f"{c.id}: {c.rule.title}", "fail" if c.status == "fail" else "pass",
                  ("WARN: " if c.status == "warn" else "") + "\n".join(c.evidence)
                  + ("" if c.status == "pass" else f"\nremediation: {c.to_dict(report.instance)['remediation']}"
                     f"\ncontrols: {', '.join(c.rule.controls)}"),
                  classname=f"gptossctl.compliance.{report.instance}") for c in report.checks]
    return junit_xml(f"gptossctl compliance {report.instance}", cases)


_LEVEL = {"high": "error", "medium": "error", "low": "warning"}


def to_sarif(report: ComplianceReport) -> dict[str, Any]:
    """SARIF 2.1.0: one rule per check, one result per check (kind pass or fail), controls as tags."""
    index = {r.id: i for i, r in enumerate(RULES)}
    rules = [{
        "id": r.id,
        "name": "".join(w.capitalize() for w in re.split(r"[._]", r.id)),
        "shortDescription": {"text": f"{r.title}."},
        "fullDescription": {"text": f"{r.title}. Supports NIST SP 800-53 {', '.join(r.controls)}."},
        "help": {"text": f"{r.remediation.replace('INSTANCE', report.instance)}."},
        "defaultConfiguration": {"level": _LEVEL[r.severity]},
        "properties": {"tags": ["compliance", *(f"NIST-800-53/{c}" for c in r.controls)],
                       "severity": r.severity},
    } for r in RULES]
    results = []
    for c in report.checks:
        res: dict[str, Any] = {"ruleId": c.id, "ruleIndex": index[c.id],
                               "message": {"text": " ".join(e.rstrip(".") + "." for e in c.evidence) or c.rule.title}}
        if c.status == "pass":
            res.update(kind="pass", level="none")
        else:
            res.update(kind="fail", level="warning" if c.status == "warn" else _LEVEL[c.rule.severity])
        if c.locations:
            res["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": Path(p).as_uri()}}}
                                for p in c.locations if p.startswith("/")]
        res["properties"] = {"status": c.status, "controls": list(c.rule.controls)}
        results.append(res)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "gptossctl", "version": __version__, "semanticVersion": __version__,
                                "rules": rules}},
            "automationDetails": {"id": f"gptossctl-compliance/{report.instance}/"},
            "invocations": [{"executionSuccessful": True,
                             "endTimeUtc": report.generated.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}],
            "results": results,
            "properties": {"instance": report.instance, "release": report.release, "ok": report.ok},
        }],
    }


def to_textfile(report: ComplianceReport, path: Path) -> None:
    """Prometheus node_exporter textfile (written atomically, as the collector requires)."""
    atomic_write(path, to_prometheus(report), 0o644)  # never renamed over a device or FIFO (fsutil checks)


def to_prometheus(report: ComplianceReport) -> bytes:
    """The textfile's bytes: check ids, statuses and counts, no evidence."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    status = Gauge("gptoss_compliance_check_status", "Compliance check result: 0 pass, 1 warn, 2 fail",
                   ["instance", "check", "severity"], registry=reg)
    for c in report.checks:
        status.labels(report.instance, c.id, c.rule.severity).set({"pass": 0, "warn": 1, "fail": 2}[c.status])
    failed = Gauge("gptoss_compliance_failed_checks", "Checks that failed", ["instance"], registry=reg)
    failed.labels(report.instance).set(report.counts["fail"])
    ok = Gauge("gptoss_compliance_ok", "1 when no check failed", ["instance"], registry=reg)
    ok.labels(report.instance).set(1 if report.ok else 0)
    release = Gauge("gptoss_compliance_release", "The release version checked", ["instance"], registry=reg)
    release.labels(report.instance).set(report.release or 0)
    last = Gauge("gptoss_compliance_last_run_timestamp_seconds", "When the check ran", ["instance"], registry=reg)
    last.labels(report.instance).set(report.generated.timestamp())
    return generate_latest(reg)


def to_json(report: ComplianceReport) -> bytes:
    return (json.dumps(report.to_dict(), indent=1) + "\n").encode()


def to_sarif_bytes(report: ComplianceReport) -> bytes:
    return (json.dumps(to_sarif(report), indent=1) + "\n").encode()


@dataclass(frozen=True)
class ReportFormat:
    name: str
    option: str  # the `compliance check` option that names its file
    mode: int
    render: Callable[[ComplianceReport], bytes]


# 0600 where the file carries evidence (host details, even with every secret redacted), the page included: its
# evidence is the reports'; the textfile carries ids and counts only (node_exporter reads it): 0644.
FORMATS: tuple[ReportFormat, ...] = (
    ReportFormat("report", "--report", REPORT_MODE, to_json),
    ReportFormat("sarif", "--sarif", REPORT_MODE, to_sarif_bytes),
    ReportFormat("junit", "--junit", REPORT_MODE, to_junit),
    ReportFormat("textfile", "--textfile", 0o644, to_prometheus),
    ReportFormat("html", "--html", REPORT_MODE, to_html),
)
FORMAT = {f.name: f for f in FORMATS}


def output_paths(targets: Mapping[str, Path | None]) -> list[tuple[Path | None, str]]:
    """(path, option) per format asked for, for fsutil.check_output_paths before any work is done."""
    return [(path, FORMAT[name].option) for name, path in targets.items()]


def write_reports(report: ComplianceReport, targets: Mapping[str, Path | None]) -> None:
    """Each format named with a path, written whole or not at all (never renamed over a device or FIFO)."""
    for name, path in targets.items():
        if path is not None:
            fmt = FORMAT[name]
            atomic_write(path, fmt.render(report), fmt.mode)
