"""Compliance of the network edge: the router's TLS listener, as the release record has it (install --listen).
Its files (certificate, key's public half, client CA, chain CA) are compared with the newest digests the audit
chain sealed (a `tls rotate`, else the release's install seal, else the sealed record's own), then the
certificate is checked (install/tls.py) on the files the router serves. One router per instance, whatever the
number of replicas, so one check for both shapes. No edge in the record: not applicable, whatever the folder
holds."""

from __future__ import annotations

from gptossctl.compliance.evidence import Evidence
from gptossctl.compliance.result import CheckResult
from gptossctl.errors import CheckFailed, UsageError
from gptossctl.install.edge import EDGE_DIR, TLS_CERT
from gptossctl.install.seal import sealed_edge
from gptossctl.install.tls import check_certificate, edge_differences, installed_files


def check_tls(ev: Evidence) -> CheckResult:
    where = (ev.live(ev.layout.etc / EDGE_DIR / TLS_CERT),)
    expected = sealed_edge(ev.chain.records, ev.layout.instance, ev.rec)
    if expected is None:
        return CheckResult("edge.tls", "pass", ("n/a: the release has no TLS listener (loopback only)",), where)
    drift = edge_differences(ev.layout, expected[0], what=expected[1])
    if drift:
        return CheckResult("edge.tls", "fail", tuple(f"{f.message} ({f.subject})" for f in drift), where)
    try:
        report = check_certificate(*installed_files(ev.layout), now=ev.now)
    except (CheckFailed, UsageError) as exc:
        return CheckResult("edge.tls", "fail", tuple(f.message + f" ({f.subject})" for f in exc.findings)
                           or (exc.message,), where)
    facts = (f"{report.subject}, chain {' <- '.join(report.chain)}",
             f"expires {report.not_after.isoformat()} (expiry_timestamp {int(report.not_after.timestamp())})",
             f"files as {expected[1]} has them")
    if report.findings:
        return CheckResult("edge.tls", "warn", (*facts, *(f.message for f in report.findings)), where)
    return CheckResult("edge.tls", "pass", facts, where)
