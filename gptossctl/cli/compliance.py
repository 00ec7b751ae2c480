"""`gptossctl compliance check` and `gptossctl support-bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from gptossctl.cli.options import (
    ExistingRootOpt,
    ExposureOpt,
    ForceOpt,
    InstanceOpt,
    JsonOpt,
    RevokedOpt,
    ThresholdOpt,
    trust_policy,
)
from gptossctl.cli.output import run, stdout
from gptossctl.install.layout import pick_instance

app = typer.Typer(no_args_is_help=True, help="Evidence that what runs is what was approved, configured as approved.")
_STYLE = {"pass": "green", "warn": "yellow", "fail": "red"}


@app.command("check")
def check(
    instance: InstanceOpt = None,
    root: ExistingRootOpt = Path("/"),
    trust: list[Path] = typer.Option([], "--trust", help="Also verify the installed manifest against these public keys, "
                                      "beside the instance's trust root: both must pass (repeatable)."),
    threshold: ThresholdOpt = 1,
    revoked: RevokedOpt = [],  # noqa: B006 - typer copies list defaults
    max_exposure: ExposureOpt = 2.0,
    expiry_warning: str = typer.Option("30d", "--expiry-warning", help="Warn when the bundle expires sooner."),
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML here (CI test reporters)."),
    sarif: Path | None = typer.Option(None, "--sarif", help="Also write SARIF 2.1.0 here (code-scanning tools)."),
    report: Path | None = typer.Option(None, "--report", help="Also write the JSON report here."),
    textfile: Path | None = typer.Option(None, "--textfile", help="Also write a Prometheus textfile here "
                                         "(node_exporter --collector.textfile.directory)."),
    html: Path | None = typer.Option(None, "--html", help="Also write one self-contained HTML page here for "
                                     "auditors: verdict first, failed checks with evidence, fix and NIST "
                                     "controls (mode 0644, secrets redacted, nothing loaded from elsewhere)."),
    as_json: JsonOpt = False,
) -> None:
    """Check the installed instance against its signed bundle and its approved configuration: file drift,
    signatures, expiry, unit and config, exposure, offline and telemetry settings, bind address, API key,
    permissions, licence, SBOM and the audit chain. Each check names its NIST SP 800-53 controls.

    Exit 0 when no check fails (warnings allowed), 1 when one does, 2 usage, 3 not readable (run as root).
    """

    def action():  # type: ignore[no-untyped-def]
        from datetime import timedelta

        from gptossctl.compliance.checks import run_checks
        from gptossctl.compliance.evidence import ComplianceOptions
        from gptossctl.compliance.outputs import output_paths, write_reports
        from gptossctl.durations import parse_duration
        from gptossctl.fsutil import check_output_paths

        outputs = {"report": report, "sarif": sarif, "junit": junit, "textfile": textfile, "html": html}
        check_output_paths(output_paths(outputs))
        policy = trust_policy(trust, threshold=threshold, revoked=revoked) if trust else None
        opts = ComplianceOptions(policy=policy, max_exposure=max_exposure,
                                 expiry_warning=timedelta(seconds=parse_duration(expiry_warning)))
        r = run_checks(root, pick_instance(root, instance), opts)
        write_reports(r, outputs)  # each format's mode is in its row of outputs.FORMATS
        return r

    def render(r) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        t = Table("check", "result", "severity", "controls", "evidence", box=None)
        for c in r.checks:
            st = _STYLE[c.status]
            t.add_row(c.id, f"[{st}]{c.status}[/{st}]", c.rule.severity, ",".join(c.rule.controls),
                      escape(c.evidence[0] if c.evidence else ""))
        stdout.print(t)
        for c in r.checks:
            if c.status != "pass":
                stdout.print(f"[{_STYLE[c.status]}]{c.id}[/{_STYLE[c.status]}]: " + escape("; ".join(c.evidence[:4])))
                stdout.print(f"  [dim]fix:[/dim] {escape(c.to_dict(r.instance)['remediation'])}")
        n = r.counts
        stdout.print(f"{r.instance} release {r.release}: {n['pass']} passed, {n['warn']} warnings, {n['fail']} failed")

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)


def support_bundle(
    instance: InstanceOpt = None,
    root: ExistingRootOpt = Path("/"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Archive to write (default "
                                       "gptoss-support-INSTANCE-TIME.tar.gz here), mode 0600; never an "
                                       "existing path unless --force, never through a link."),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Collect the unit, redacted configuration, journal tail, hardware inventory, status, compliance report
    and audit log into one archive for support. Secrets are removed by value, by structure and by name; the
    archive is read back for them before it is written. Exit 0 written, 1 a secret survived redaction
    (nothing written)."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.compliance.support import write_support_bundle

        return write_support_bundle(root, pick_instance(root, instance), output, force=force)

    def render(r: Any) -> None:
        verdict = "safe to send" if r.safe else (
            "[yellow]not known to be safe[/yellow]: " + escape("; ".join(r.gaps) or "a redaction layer did not run")
            + " (read it before sending)")
        stdout.print(f"[green]written[/green] {escape(str(r.path))} ({len(r.members)} files, "
                     f"{r.redacted} secret(s) redacted, layers: {', '.join(r.layers)}): {verdict}")

    run(action, as_json=as_json, render=render)
