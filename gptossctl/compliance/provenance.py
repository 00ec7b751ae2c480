"""Where it came from and what happened to it: licence files shipped, the SBOM equal to what is installed,
the audit chain intact, and the service running the current release."""

from __future__ import annotations

import json
from typing import Any

from gptossctl.adapters.openai_http import health
from gptossctl.compliance.evidence import RECORD_CHANGED, Chain, Evidence, cap, installed_dists, read_chain
from gptossctl.compliance.result import CheckResult
from gptossctl.install import audit
from gptossctl.install.layout import Layout
from gptossctl.install.release import RELEASE_JSON, unit_release
from gptossctl.install.seal import last_sealed


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
    if ev.sealed.record_changed:
        return CheckResult("provenance.sbom", "fail", (RECORD_CHANGED,), locs + (ev.live(ev.release / RELEASE_JSON),))
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
    return chain_result(ev.layout, ev.chain)


def audit_chain(layout: Layout) -> CheckResult:
    return chain_result(layout, read_chain(layout))


def chain_result(layout: Layout, chain: Chain) -> CheckResult:
    """Intact, and no reset waiting for acknowledgement. A reset fails until acknowledged: the entries before it
    cannot be verified any more, and a daily check that only gates on failures must not pass that quietly."""
    locs = (str(layout.live_path(layout.log_dir / audit.LOG)),)
    state = chain.state
    if state is None:
        return CheckResult("audit.chain", "fail", (f"the audit log cannot be read: {chain.error}",), locs)
    if state.findings:
        return CheckResult("audit.chain", "fail", cap([f"{f.subject}: {f.message}" for f in state.findings]), locs)
    pending = audit.pending_reset(state.records)
    if pending is not None:
        return CheckResult("audit.chain", "fail", (_reset_said(pending), "review the broken chain kept as evidence, "
                                                   "then acknowledge the reset: gptossctl audit acknowledge --yes"),
                           locs)
    done = audit.last_reset(state.records)
    return CheckResult("audit.chain", "pass", (f"{state.entries} entries, chain, head and anchor intact",)
                       + ((_reset_said(done) + "; acknowledged",) if done else ()), locs)


def _reset_said(entry: dict[str, Any]) -> str:
    reset = entry["reset"]
    prev = reset.get("previous") or {}
    before = f"entry {prev.get('seq')} ({prev.get('from')})" if prev else "an unknown entry"
    return (f"the chain was reset at entry {entry['seq']} ({entry.get('time')}, by {entry.get('user')}): "
            f"{reset.get('reason')}; the previous chain ended at {before}; kept as "
            f"{', '.join(map(str, reset.get('kept') or [])) or 'nothing'}")


def check_sealed(ev: Evidence) -> CheckResult:
    """The release record, environment listing, API key and rendered files are what the newest seal of the
    current release in the audit chain says: one function for one vLLM unit or replicas and a router (the
    seal lists every rendered file of the release)."""
    locs = (ev.live(ev.release / RELEASE_JSON),)
    seal, diffs = ev.sealed.seal, ev.sealed.diffs
    broken = " (and the audit chain does not verify: see audit.chain)" if ev.chain.broken else ""
    last = last_sealed(ev.chain.records, ev.layout.instance)
    if last is not None and last != ev.rec.version:
        return CheckResult("record.sealed", "fail", (
            f"current points at release {ev.rec.version}, but the newest install or rollback in the audit chain "
            f"sealed release {last}{broken}: current (and the unit) were moved outside gptossctl; go back with "
            f"'gptossctl rollback --to {last}' or reinstall the approved bundle",),
            locs + (ev.live(ev.layout.current),))
    if seal is None:
        return CheckResult("record.sealed", "warn", (f"release {ev.rec.version} has no seal in the audit chain"
                                                     f"{broken}: installed by an older gptossctl; reinstall or roll "
                                                     "forward to seal it: gptossctl install BUNDLE --repair",), locs)
    if diffs:
        return CheckResult("record.sealed", "fail", cap([f"{ev.live(p)}: {m}" for p, m in diffs]),
                           tuple(dict.fromkeys(ev.live(p) for p, _m in diffs)))
    files = seal.get("files")
    n = len(files) if isinstance(files, dict) else 0
    said = (f"{RELEASE_JSON}, {'the environment listing, ' if seal.get('listing') else ''}the API key and {n} "
            f"rendered files match the seal of release {ev.rec.version}")
    # A broken chain fails audit.chain; the files still match what its entries sealed, and it says so.
    return CheckResult("record.sealed", "pass", (said + (", read from a chain that does not verify (see "
                                                         "audit.chain)" if broken else ""),), locs)


def check_running(ev: Evidence) -> CheckResult:
    """Every member's unit runs the current release; live, every unit of the set is active and answers."""
    layout, ss, bad, good = ev.layout, ev.serving, list[str](), list[str]()
    for m in ss.members:
        in_unit = unit_release(layout, m.path)
        if in_unit != ev.rec.version:
            bad.append(f"{m.unit} runs release {in_unit}, current is {ev.rec.version}: an install was interrupted")
    locs = [ev.live(path) for _n, path, _c in ss.unit_paths]
    result = CheckResult("service.running", "fail" if bad else "pass", cap(bad or [
        f"staged tree: {len(ss.members)} replica unit(s) run release {ev.rec.version}; not started here"]),
        tuple(locs))
    if bad or not ev.systemd.live:
        return result
    if not ev.active:
        return CheckResult("service.running", "warn", (f"{ss.front} is {ev.systemd.active_state(ss.front)}",),
                           tuple(locs))
    fronts = [(ss.router.unit, ev.endpoint)] if ss.router else []
    for name, url in [*fronts, *((m.unit, m.endpoint) for m in ss.members)]:
        state = ev.systemd.active_state(name)
        code = health(url, timeout=10.0) if state == "active" else None
        line = f"{name} {state}, GET /health {code if code is not None else '-'}"
        (good if code == 200 else bad).append(line)
    return CheckResult("service.running", "fail" if bad else "pass",
                       cap(bad or [f"release {ev.rec.version} on every replica", *good]), tuple(locs))
