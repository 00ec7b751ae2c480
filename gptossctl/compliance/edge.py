"""Compliance of the network edge: the router's TLS certificate (install/tls.py's check, on the files the
router serves). One router per instance, whatever the number of replicas, so one check for both shapes."""

from __future__ import annotations

from gptossctl.compliance.evidence import Evidence
from gptossctl.compliance.result import CheckResult
from gptossctl.errors import CheckFailed, UsageError
from gptossctl.install.edge import EDGE_DIR, TLS_CERT
from gptossctl.install.tls import installed_certificate


def check_tls(ev: Evidence) -> CheckResult:
    where = (ev.live(ev.layout.etc / EDGE_DIR / TLS_CERT),)
    try:
        report = installed_certificate(ev.layout, now=ev.now)
    except (CheckFailed, UsageError) as exc:
        return CheckResult("edge.tls", "fail", tuple(f.message + f" ({f.subject})" for f in exc.findings)
                           or (exc.message,), where)
    if report is None:
        return CheckResult("edge.tls", "pass", ("no TLS listener: the instance serves on loopback only",), where)
    facts = (f"{report.subject}, chain {' <- '.join(report.chain)}",
             f"expires {report.not_after.isoformat()} (expiry_timestamp {int(report.not_after.timestamp())})")
    if report.findings:
        return CheckResult("edge.tls", "warn", (*facts, *(f.message for f in report.findings)), where)
    return CheckResult("edge.tls", "pass", facts, where)
