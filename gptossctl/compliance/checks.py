"""`gptossctl compliance check`: is what runs what was approved, configured as approved?

Flow: open the instance -> its current release record -> gather the evidence once (compliance.evidence) ->
run every check of the catalogue (compliance.rules), each a function of the evidence in its family module
(integrity, configuration, access, provenance) -> one report, written in any of the formats of
compliance.outputs. Nothing here changes the system; the API key never enters a report.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gptossctl.compliance import access, configuration, edge, integrity, provenance
from gptossctl.compliance.evidence import ComplianceOptions, Evidence, current, gather, open_instance
from gptossctl.compliance.redact import instance_redactor, redact_report
from gptossctl.compliance.result import CheckResult, ComplianceReport
from gptossctl.install.layout import Layout

CHECKS: tuple[Callable[[Evidence], CheckResult], ...] = (
    integrity.check_signatures, integrity.check_expiry, integrity.check_payload, integrity.check_environment,
    provenance.check_sealed,
    configuration.check_unit, configuration.check_release_files, configuration.check_exposure,
    configuration.check_offline, configuration.check_usage_stats, configuration.check_bind,
    access.check_api_key, access.check_secrets, access.check_permissions,
    provenance.check_license, provenance.check_sbom, provenance.check_audit, provenance.check_running,
    edge.check_tls)


def run_checks(root: Path, instance: str, opts: ComplianceOptions = ComplianceOptions()) -> ComplianceReport:
    """Every check; the report's evidence is redacted (compliance.redact) before anyone writes it anywhere."""
    layout = open_instance(root, instance)
    return redact_report(_run_checks(layout, opts), instance_redactor(layout))


def _run_checks(layout: Layout, opts: ComplianceOptions) -> ComplianceReport:
    root, instance = layout.root, layout.instance
    cur, rec = current(layout)
    report = ComplianceReport(instance, root, cur, opts.now or datetime.now(UTC), host=platform.node(),
                              bundle=rec.bundle if rec else "", bundle_sha256=rec.manifest_sha256 if rec else "")
    if rec is None:
        report.checks.append(CheckResult("release.current", "fail", (
            f"no current release under {layout.live_path(layout.opt)}" if cur is None
            else f"release {cur}'s release.json is missing or unreadable",), (str(layout.live_path(layout.opt)),)))
        report.checks.append(provenance.audit_chain(layout))
        return report
    ev = gather(layout, rec, opts)
    report.checks.append(CheckResult("release.current", "pass", (f"release {cur} ({rec.bundle}, profile "
                                                                 f"{rec.profile}) installed {rec.installed_at}",),
                                     (ev.live(ev.release),)))
    report.checks += [check(ev) for check in CHECKS]
    return report
