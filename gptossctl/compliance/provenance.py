"""Where it came from and what happened to it: licence files shipped, the SBOM equal to what is installed,
the audit chain intact, and the service running the current release."""

from __future__ import annotations

import json

from gptossctl.adapters.openai_http import health
from gptossctl.compliance import replicas
from gptossctl.compliance.evidence import Evidence, cap, installed_dists
from gptossctl.compliance.result import CheckResult
from gptossctl.errors import CheckFailed
from gptossctl.install import audit
from gptossctl.install.layout import Layout
from gptossctl.install.release import unit_release


def check_license(ev: Evidence) -> CheckResult:
    m = ev.manifest
    if m is None:
        return CheckResult("license.model", "fail", ("the signed manifest is unreadable",))
    listed = {f.path: f.size for f in m.files}
    bad, evidence = [], []
    for name in ("LICENSE", "USAGE_POLICY"):
        path = f"model/{name}"
        on_disk = ev.release / "payload" / path
        if path not in listed:
            bad.append(f"{name} is not in the signed manifest: the model shipped without it")
        elif not on_disk.is_file():
            bad.append(f"{ev.live(on_disk)} is missing")
        else:
            evidence.append(f"{name}: {listed[path]} bytes, signed")
    model_license = (m.components.get("model") or {}).get("license")
    evidence.append(f"model licence {model_license or 'not declared'} (signed manifest)")
    locs = tuple(ev.live(ev.release / "payload" / "model" / n) for n in ("LICENSE", "USAGE_POLICY"))
    if bad:
        return CheckResult("license.model", "fail", cap(bad), locs)
    return CheckResult("license.model", "pass", tuple(evidence), locs)


def check_sbom(ev: Evidence) -> CheckResult:
    from packaging.utils import canonicalize_name

    path = ev.release / "payload" / "sbom" / "bom.cdx.json"
    locs = (ev.live(path),)
    m = ev.manifest
    if m is None or "sbom/bom.cdx.json" not in {f.path for f in m.files}:
        return CheckResult("provenance.sbom", "fail", ("no SBOM in the signed manifest",), locs)
    try:
        bom = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return CheckResult("provenance.sbom", "fail", (f"the SBOM is unreadable: {exc}",), locs)
    listed: dict[str, str] = {}
    for c in bom.get("components", []):
        if str(c.get("purl", "")).startswith("pkg:pypi/"):
            listed[canonicalize_name(c["name"])] = c["version"]
    evidence = [f"SBOM lists {len(listed)} Python packages (CycloneDX {bom.get('specVersion')})"]
    if ev.rec.external_env:
        return CheckResult("provenance.sbom", "warn", (*evidence, "the service runs the site's environment "
                                                       f"{ev.rec.python}, which the SBOM does not cover"), locs)
    installed = installed_dists(ev.release / "venv")
    bad = [f"{n} {installed[n]} is installed but not in the SBOM" for n in sorted(set(installed) - set(listed))]
    bad += [f"{n} {listed[n]} is in the SBOM but not installed" for n in sorted(set(listed) - set(installed))]
    bad += [f"{n}: SBOM {listed[n]}, installed {installed[n]}" for n in sorted(set(listed) & set(installed))
            if listed[n] != installed[n]]
    if bad:
        return CheckResult("provenance.sbom", "fail", cap(bad), locs + (ev.live(ev.release / "venv"),))
    return CheckResult("provenance.sbom", "pass", (*evidence, f"the environment holds exactly those "
                                                   f"{len(installed)} packages at those versions"), locs)


def check_audit(ev: Evidence) -> CheckResult:
    return audit_chain(ev.layout)


def audit_chain(layout: Layout) -> CheckResult:
    log = layout.log_dir / audit.LOG
    live = str(layout.live_path(log))
    locs = (live,)
    if not log.exists():
        return CheckResult("audit.chain", "fail", (f"{live} is missing, yet an instance is installed: "
                                                   "the log was removed",), locs)
    try:
        r = audit.verify(layout.log_dir, anchor=layout.audit_anchor)
    except CheckFailed as exc:
        return CheckResult("audit.chain", "fail", cap([f"{f.subject}: {f.message}" for f in exc.findings]), locs)
    return CheckResult("audit.chain", "pass", (f"{r.entries} entries, chain, head and anchor intact",), locs)


def check_running(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_running(ev)
    locs = (ev.live(ev.layout.unit_path),)
    in_unit = unit_release(ev.layout)
    if in_unit != ev.rec.version:
        return CheckResult("service.running", "fail", (f"the unit runs release {in_unit}, current is "
                                                       f"{ev.rec.version}: an install was interrupted",), locs)
    if not ev.systemd.live:
        return CheckResult("service.running", "pass", (f"staged tree: the unit runs release {in_unit}; "
                                                       "not started here",), locs)
    if not ev.active:
        state = ev.systemd.active_state(ev.layout.unit_name)
        return CheckResult("service.running", "warn", (f"{ev.layout.unit_name} is {state}",), locs)
    code = health(ev.endpoint, timeout=10.0)
    if isinstance(code, str):
        return CheckResult("service.running", "fail", (f"active, but /health failed: {code}",), locs)
    return CheckResult("service.running", "pass" if code == 200 else "fail",
                       (f"active on release {in_unit}; GET /health {code}",), locs)
