"""Is the installed release the signed one, byte for byte, and still valid? Signatures, expiry, payload
drift, drift of the environment install built."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import timedelta
from pathlib import Path

from gptossctl.bundle.dsse import parse_envelope
from gptossctl.bundle.layout import ENVELOPE, MANIFEST
from gptossctl.compliance.evidence import MAX_EVIDENCE, RECORD_CHANGED, Evidence, cap, is_date, is_signature, read_text
from gptossctl.compliance.result import CheckResult
from gptossctl.errors import GptossctlError
from gptossctl.install.environment import LISTING, VENV, compare_listing, interpreter_exposure
from gptossctl.install.release import RELEASE_JSON
from gptossctl.install.timer import COMPLIANCE_UNITS


def check_signatures(ev: Evidence) -> CheckResult:
    bad = [f"{f.subject}: {f.message}" for f in ev.verify_findings if is_signature(f)]
    evidence = [ev.policy_note] + ([f"signed by {', '.join(ev.signed_by)}"] if ev.signed_by else [])
    try:
        payload = parse_envelope((ev.release / ENVELOPE).read_bytes()).payload
        digest = hashlib.sha256(payload).hexdigest()
        recorded = ev.rec.manifest_sha256
        if recorded and digest != recorded:
            bad.append(f"the release's signed manifest (sha256 {digest}) is not the one installed "
                       f"(sha256 {recorded}): it was replaced")
        else:
            evidence.append(f"signed manifest sha256 {digest} is the one installed")
    except (GptossctlError, OSError) as exc:
        bad.append(f"{ENVELOPE}: {getattr(exc, 'message', exc)}")
    m = ev.manifest
    if m is None:
        bad.append("the signed manifest is unreadable")
    if bad or m is None:
        return CheckResult("bundle.signatures", "fail", cap(bad),
                           (ev.live(ev.release / ENVELOPE), ev.live(ev.release / MANIFEST)))
    if ev.trust_state == "legacy":
        return CheckResult("bundle.signatures", "warn", (*evidence, f"{m.name} v{m.version}: signatures meet the "
                                                         "threshold of the listed keys; no trust root yet: migrate "
                                                         "by reinstalling the current bundle"),
                           (ev.live(ev.release / ENVELOPE),))
    return CheckResult("bundle.signatures", "pass", (*evidence, f"{m.name} v{m.version}: signatures meet the "
                                                    "threshold under the trusted keys"),
                       (ev.live(ev.release / ENVELOPE),))


def check_expiry(ev: Evidence) -> CheckResult:
    m = ev.manifest
    if m is None:
        return CheckResult("bundle.expiry", "fail", ("the signed manifest is unreadable",))
    if ev.clock_behind is not None:  # a clock set back makes an expired bundle look valid
        return CheckResult("bundle.expiry", "fail", (f"clock.behind_audit: {ev.clock_behind.message}",
                                                     ev.clock_behind.hint or ""))
    left = m.expires - ev.now
    when = f"expires {m.expires.isoformat(timespec='seconds')}"
    if any(is_date(f) for f in ev.verify_findings) or left <= timedelta(0):
        return CheckResult("bundle.expiry", "fail", (f"{when}: expired {-left.days} day(s) ago",))
    if left < ev.opts.expiry_warning:
        return CheckResult("bundle.expiry", "warn", (f"{when}: {left.days} day(s) left, under the "
                                                     f"{ev.opts.expiry_warning.days}-day warning",))
    return CheckResult("bundle.expiry", "pass", (f"{when}: {left.days} day(s) left",))


def check_payload(ev: Evidence) -> CheckResult:
    ss = ev.serving  # what install adds beside the bundle: every member's files and the router's
    release_own = {VENV, LISTING, RELEASE_JSON, *(n for m in ss.members for n in m.files),
                   *(ss.router.files if ss.router else ())}
    drift = [f for f in ev.verify_findings if not (is_signature(f) or is_date(f))
             and not (f.code == "bundle.extra_file" and f.subject in release_own)]
    if drift:
        return CheckResult("drift.payload", "fail",
                           cap([f"{f.code.split('.')[-1]}: {f.subject}: {f.message}" for f in drift]),
                           tuple(sorted({ev.live(ev.release / f.subject) for f in drift}))[:MAX_EVIDENCE])
    if ev.manifest is None:
        return CheckResult("drift.payload", "fail", ("the signed manifest is unreadable",))
    m = ev.manifest
    return CheckResult("drift.payload", "pass", (f"{len(m.files)} files, {m.total_size / 2**20:.1f} MiB re-hashed: "
                                                 "all match the signed manifest; nothing missing or added",),
                       (ev.live(ev.release / "payload"),))


def _on_target(ev: Evidence, path: Path) -> Path:
    staged = ev.layout.root / path.relative_to("/") if path.is_absolute() else path
    return staged if ev.layout.staged and staged.exists() else path


def _timer_interpreters(ev: Evidence) -> list[Path]:
    """The interpreter running this check (what the compliance units render with) and whatever the installed
    compliance service's ExecStart= names."""
    found = [Path(sys.executable)]
    text = read_text(ev.layout.unit_dir / COMPLIANCE_UNITS[0]) or ""
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "ExecStart" and value.split():
            found.append(_on_target(ev, Path(value.split()[0].lstrip("@-:+!"))))
    return list(dict.fromkeys(found))


def exposed_interpreters(ev: Evidence) -> list[str]:
    """The interpreters the units run that someone other than root could change (install.environment)."""
    owners = frozenset({0, ev.layout.root.stat().st_uid}) if ev.layout.staged else frozenset({0})
    pythons = _timer_interpreters(ev) + ([_on_target(ev, Path(ev.rec.python))] if ev.rec.external_env else [])
    return [f"{python}: {why}" for python in dict.fromkeys(pythons) for why in interpreter_exposure(python, owners)]


def check_environment(ev: Evidence) -> CheckResult:
    if ev.sealed.record_changed or ev.sealed.listing_changed:  # neither says what install built any more
        return CheckResult("drift.environment", "fail", (RECORD_CHANGED if ev.sealed.record_changed else
                                                         f"{LISTING} differs from the listing sealed in the audit "
                                                         "chain at install: the environment cannot be compared "
                                                         "with what install built",),
                           (ev.live(ev.release / (RELEASE_JSON if ev.sealed.record_changed else LISTING)),))
    exposed = exposed_interpreters(ev)
    if exposed:
        return CheckResult("drift.environment", "fail", cap(exposed), (ev.live(ev.release),))
    if ev.rec.external_env:
        return CheckResult("drift.environment", "warn", (f"the service runs the site's environment "
                                                         f"{ev.rec.python} (--vllm-python), not one built "
                                                         "from the bundle: its files are the site's to track "
                                                         "(owned by root and written by nobody else, and so is "
                                                         "gptossctl's own interpreter)",))
    venv = ev.release / "venv"
    try:
        recorded = json.loads((ev.release / LISTING).read_text())
    except (OSError, ValueError):
        return CheckResult("drift.environment", "fail", (f"{LISTING} is missing or unreadable: the environment "
                                                         "cannot be compared with what install built",),
                           (ev.live(ev.release / LISTING),))
    diffs = compare_listing(venv, recorded)
    if diffs:
        return CheckResult("drift.environment", "fail", cap([f"{k}: venv/{p}: {d}" for k, p, d in diffs]),
                           tuple(ev.live(venv / p) for _k, p, _d in diffs[:MAX_EVIDENCE]))
    n = len(recorded.get("files", {}))
    return CheckResult("drift.environment", "pass", (f"{n} files of {ev.live(venv)} match what install built",),
                       (ev.live(venv),))
