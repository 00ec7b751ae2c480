"""`gptossctl compliance check`: is what runs what was approved, configured as approved?

Every check has a stable id, a severity, a status (pass, warn, fail), the evidence it saw, what to do
about it, and the NIST SP 800-53 controls it supports, so an auditor can file the report and a
scheduler can alert on it. Nothing here changes the system; the API key never enters a report.

The approved state is the signed bundle (payload files, profiles, unit template) plus what install
recorded in release.json (port, profile, GPUs, interpreter) and in the environment's own listing. The
rendered unit, config and environment file are rendered again from those and compared, so an edit to
any of them is caught even when the copy inside the release was edited too.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.adapters.systemd import Systemd
from gptossctl.bundle.verify import TrustPolicy
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, UsageError
from gptossctl.secretnames import SECRET_NAME
from gptossctl.service.layout import SERVICE_USER, Layout, check_instance

REPORT_SCHEMA = "gptossctl.compliance/1"
LOOPBACKS = ("127.0.0.1", "::1", "localhost")
_MAX_EVIDENCE = 12


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: str  # high | medium | low
    controls: tuple[str, ...]
    remediation: str


# The catalogue: every report lists every rule, in this order, so a missing check is itself visible.
RULES: tuple[Rule, ...] = (
    Rule("release.current", "A current release is installed and its record is readable", "high", ("CM-2", "CM-8"),
         "install the approved bundle: gptossctl install BUNDLE --trust KEY.pub"),
    Rule("bundle.signatures", "The installed manifest is signed by enough trusted keys and is the one installed",
         "high", ("SI-7", "CM-14"),
         "install a bundle signed by the keys in /etc/gptoss/INSTANCE/trust (or pass the approved keys with "
         "--trust); if the release's manifest was replaced, reinstall with --repair"),
    Rule("bundle.expiry", "The bundle is within its approved validity period", "medium", ("CM-2", "SA-22"),
         "pack, sign and install a fresh bundle before it expires (bundles/*.yaml expires_in)"),
    Rule("drift.payload", "Every installed file matches the signed manifest (no change, loss or addition)",
         "high", ("SI-7", "CM-3"),
         "keep the changed files for investigation, then restore from the signed bundle: "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("drift.environment", "The Python environment is as install built it from the bundle's wheels", "high",
         ("SI-7", "CM-3"),
         "keep the changed files for investigation, then rebuild it from the signed bundle: "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("config.unit", "The systemd unit is the one rendered from the signed template, with no drop-ins",
         "high", ("CM-2", "CM-6"),
         "remove local edits and drop-ins (put site settings in a profile and repack), then "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("config.release_files", "vllm.yaml and service.env are as rendered from the signed profile", "high",
         ("CM-2", "CM-6"),
         "change settings through a signed profile, not by hand; restore with "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("config.exposure", "systemd-analyze security rates the unit at or below the exposure threshold",
         "medium", ("CM-6", "CM-7", "AC-6"),
         "restore the hardened unit (gptossctl install --repair); never loosen sandboxing with a drop-in"),
    Rule("config.offline", "vLLM runs offline: hub offline variables set, network fenced to loopback", "high",
         ("SC-7", "CM-7"),
         "restore service.env and the unit (gptossctl install --repair); HF_HUB_OFFLINE=1, "
         "TRANSFORMERS_OFFLINE=1 and IPAddressDeny=any must stay"),
    Rule("config.usage_stats", "Usage statistics and telemetry are off", "medium", ("SC-7", "SI-4"),
         "restore service.env (gptossctl install --repair): VLLM_NO_USAGE_STATS=1 and DO_NOT_TRACK=1"),
    Rule("config.bind", "vLLM binds only the approved loopback address", "high", ("SC-7", "AC-4"),
         "restore vllm.yaml (gptossctl install --repair); publish beyond this host only through an "
         "allowlisting TLS proxy (README, 'Serving beyond this host')"),
    Rule("access.api_key", "The API key is set and required (probed live when the service runs)", "high",
         ("AC-3", "IA-2"),
         "restore service.env from /etc/gptoss/INSTANCE/api-key (gptossctl install --repair) and check "
         "nothing strips VLLM_API_KEY"),
    Rule("access.secrets", "Secret files are 0600 and owned by root; their directory is 0700", "high",
         ("AC-6", "SC-28"),
         "chmod 0600 (files) / 0700 (directory) and chown root:root; if a secret was readable by others, "
         "rotate the key: delete /etc/gptoss/INSTANCE/api-key and reinstall with --repair"),
    Rule("access.permissions", "Nothing installed is world-writable or writable by the service user",
         "medium", ("AC-6", "CM-5"),
         "chmod o-w the paths listed and chown them to root; then run gptossctl install --repair"),
    Rule("license.model", "The model's LICENSE and USAGE_POLICY were shipped with it", "medium", ("CM-10",),
         "repack the bundle from the model repository's snapshot (bundle pack keeps LICENSE and USAGE_POLICY)"),
    Rule("provenance.sbom", "The SBOM is shipped and lists exactly the installed packages", "medium",
         ("CM-8", "SR-4"),
         "install from a bundle packed by gptossctl (it writes the SBOM from the wheels it ships); an "
         "environment given with --vllm-python is outside the bundle's SBOM"),
    Rule("audit.chain", "The audit log's hash chain is intact", "high", ("AU-9", "AU-2"),
         "keep the log as evidence, compare it with your log collector's copy, and investigate who edited it"),
    Rule("service.running", "The service runs the current release and answers /health", "medium",
         ("CP-10", "SI-6"),
         "gptossctl status; journalctl -u gptoss@INSTANCE; reinstall or gptossctl rollback"),
)
RULE = {r.id: r for r in RULES}


@dataclass(frozen=True)
class CheckResult:
    id: str
    status: str  # pass | warn | fail
    evidence: tuple[str, ...]
    locations: tuple[str, ...] = ()  # paths as the booted host sees them

    @property
    def rule(self) -> Rule:
        return RULE[self.id]

    def to_dict(self, instance: str) -> dict[str, Any]:
        r = self.rule
        return {"id": self.id, "title": r.title, "severity": r.severity, "status": self.status,
                "evidence": list(self.evidence), "remediation": r.remediation.replace("INSTANCE", instance),
                "controls": list(r.controls), "locations": list(self.locations)}


@dataclass
class ComplianceReport:
    instance: str
    root: Path
    release: int | None
    generated: datetime
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("pass", "warn", "fail")}

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def findings(self) -> list[Finding]:
        return [Finding(f"compliance.{c.id}", ", ".join(c.locations) or c.id, "; ".join(c.evidence),
                        hint=c.rule.remediation.replace("INSTANCE", self.instance))
                for c in self.checks if c.status != "pass"]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "instance": self.instance, "root": str(self.root),
                "release": self.release, "generated": self.generated.isoformat(timespec="seconds"),
                "gptossctl": __version__, "ok": self.ok, "counts": self.counts,
                "checks": [c.to_dict(self.instance) for c in self.checks]}


@dataclass(frozen=True)
class ComplianceOptions:
    policy: TrustPolicy | None = None  # None: the trust recorded at install
    max_exposure: float = 2.0
    expiry_warning: timedelta = timedelta(days=30)
    now: datetime | None = None


# ---------------------------------------------------------------- what one run reads once


@dataclass
class _Ctx:
    layout: Layout
    systemd: Systemd
    opts: ComplianceOptions
    now: datetime
    release: Path
    rec: dict[str, Any]
    verify_findings: list[Finding] = field(default_factory=list)
    manifest: Any = None
    policy_note: str = ""
    api_key: str | None = None
    rendered: dict[str, str] | None = None
    render_error: str | None = None
    active: bool = False
    env_text: str | None = None  # service.env, read once

    @property
    def env(self) -> dict[str, str] | None:
        return None if self.env_text is None else parse_env(self.env_text)

    def live(self, p: Path) -> str:
        return str(self.layout.live_path(p))

    @property
    def endpoint(self) -> str:
        return f"http://{self.rec.get('host', '127.0.0.1')}:{self.rec.get('port', 8000)}"


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip().strip('"')
    return out


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _shown(key: str, value: str | None) -> str:
    if value is None:
        return "(absent)"
    return "(redacted)" if SECRET_NAME.search(key) else value


def _cap(lines: Sequence[str]) -> tuple[str, ...]:
    lines = list(lines)
    if len(lines) > _MAX_EVIDENCE:
        return (*lines[:_MAX_EVIDENCE], f"... and {len(lines) - _MAX_EVIDENCE} more")
    return tuple(lines)


# ---------------------------------------------------------------- the checks


def _verify(ctx: _Ctx) -> None:
    """One pass over the release's bytes: signatures, dates and every payload file (verify_bundle)."""
    from gptossctl.bundle.dsse import parse_envelope
    from gptossctl.bundle.layout import ENVELOPE
    from gptossctl.bundle.manifest import parse_manifest
    from gptossctl.bundle.verify import verify_bundle
    from gptossctl.service.install import load_trust

    policy = ctx.opts.policy
    if policy is None:
        try:
            policy = load_trust(ctx.layout)
        except GptossctlError as exc:
            ctx.policy_note = f"the recorded trust is unreadable: {exc.message}"
        else:
            ctx.policy_note = "trust recorded at install" if policy else "no trust recorded at install"
    else:
        ctx.policy_note = "trust given on the command line"
    try:
        vb = verify_bundle(ctx.release, policy)
        ctx.manifest = vb.manifest
    except CheckFailed as exc:
        ctx.verify_findings = list(exc.findings)
        try:
            ctx.manifest = parse_manifest(parse_envelope((ctx.release / ENVELOPE).read_bytes()).payload)
        except (GptossctlError, OSError):
            ctx.manifest = None
    except UsageError as exc:
        ctx.verify_findings = [Finding("bundle.unreadable", ctx.live(ctx.release), exc.message)]
    if policy is None:
        ctx.verify_findings.append(Finding("signature.no_trust", "trust", ctx.policy_note))


def _is_signature(f: Finding) -> bool:
    return f.code.startswith("signature.")


def _is_date(f: Finding) -> bool:
    return f.code in ("bundle.expired", "bundle.not_yet_valid")


def check_signatures(ctx: _Ctx) -> CheckResult:
    import hashlib

    from gptossctl.bundle.layout import ENVELOPE, MANIFEST

    bad = [f"{f.subject}: {f.message}" for f in ctx.verify_findings if _is_signature(f)]
    evidence = [ctx.policy_note]
    try:
        from gptossctl.bundle.dsse import parse_envelope

        payload = parse_envelope((ctx.release / ENVELOPE).read_bytes()).payload
        digest = hashlib.sha256(payload).hexdigest()
        recorded = ctx.rec.get("manifest_sha256")
        if recorded and digest != recorded:
            bad.append(f"the release's signed manifest ({digest[:16]}…) is not the one installed "
                       f"({str(recorded)[:16]}…): it was replaced")
        else:
            evidence.append(f"signed manifest {digest[:16]}… is the one installed")
    except (GptossctlError, OSError) as exc:
        bad.append(f"{ENVELOPE}: {getattr(exc, 'message', exc)}")
    m = ctx.manifest
    if m is None:
        bad.append("the signed manifest is unreadable")
    if bad:
        return CheckResult("bundle.signatures", "fail", _cap(bad),
                           (ctx.live(ctx.release / ENVELOPE), ctx.live(ctx.release / MANIFEST)))
    return CheckResult("bundle.signatures", "pass", (*evidence, f"{m.name} v{m.version}: signatures meet the "
                                                    "threshold under the trusted keys"),
                       (ctx.live(ctx.release / ENVELOPE),))


def check_expiry(ctx: _Ctx) -> CheckResult:
    m = ctx.manifest
    if m is None:
        return CheckResult("bundle.expiry", "fail", ("the signed manifest is unreadable",))
    left = m.expires - ctx.now
    when = f"expires {m.expires.isoformat(timespec='seconds')}"
    if any(_is_date(f) for f in ctx.verify_findings) or left <= timedelta(0):
        return CheckResult("bundle.expiry", "fail", (f"{when}: expired {-left.days} day(s) ago",))
    if left < ctx.opts.expiry_warning:
        return CheckResult("bundle.expiry", "warn", (f"{when}: {left.days} day(s) left, under the "
                                                     f"{ctx.opts.expiry_warning.days}-day warning",))
    return CheckResult("bundle.expiry", "pass", (f"{when}: {left.days} day(s) left",))


def check_payload(ctx: _Ctx) -> CheckResult:
    from gptossctl.service.environment import LISTING, VENV
    from gptossctl.service.install import CONFIG, ENV_FILE, RELEASE_JSON, UNIT_COPY

    release_own = {VENV, LISTING, CONFIG, ENV_FILE, UNIT_COPY, RELEASE_JSON}  # what install adds beside the bundle
    drift = [f for f in ctx.verify_findings if not (_is_signature(f) or _is_date(f))
             and not (f.code == "bundle.extra_file" and f.subject in release_own)]
    if drift:
        return CheckResult("drift.payload", "fail",
                           _cap([f"{f.code.split('.')[-1]}: {f.subject}: {f.message}" for f in drift]),
                           tuple(sorted({ctx.live(ctx.release / f.subject) for f in drift}))[:_MAX_EVIDENCE])
    if ctx.manifest is None:
        return CheckResult("drift.payload", "fail", ("the signed manifest is unreadable",))
    m = ctx.manifest
    return CheckResult("drift.payload", "pass", (f"{len(m.files)} files, {m.total_size / 2**20:.1f} MiB re-hashed: "
                                                 "all match the signed manifest; nothing missing or added",),
                       (ctx.live(ctx.release / "payload"),))


def check_environment(ctx: _Ctx) -> CheckResult:
    from gptossctl.service.environment import LISTING, compare_listing

    if ctx.rec.get("external_env"):
        return CheckResult("drift.environment", "warn", (f"the service runs the site's environment "
                                                         f"{ctx.rec.get('python')} (--vllm-python), not one built "
                                                         "from the bundle: its files are the site's to track",))
    venv = ctx.release / "venv"
    try:
        recorded = json.loads((ctx.release / LISTING).read_text())
    except (OSError, ValueError):
        return CheckResult("drift.environment", "fail", (f"{LISTING} is missing or unreadable: the environment "
                                                         "cannot be compared with what install built",),
                           (ctx.live(ctx.release / LISTING),))
    diffs = compare_listing(venv, recorded)
    if diffs:
        return CheckResult("drift.environment", "fail", _cap([f"{k}: venv/{p}: {d}" for k, p, d in diffs]),
                           tuple(ctx.live(venv / p) for _k, p, _d in diffs[:_MAX_EVIDENCE]))
    n = len(recorded.get("files", {}))
    return CheckResult("drift.environment", "pass", (f"{n} files of {ctx.live(venv)} match what install built",),
                       (ctx.live(venv),))


def _rerender(ctx: _Ctx) -> None:
    from gptossctl.adapters.openai_http import read_api_key
    from gptossctl.hardware.profiles import load_profile, load_profiles
    from gptossctl.service.install import render_release, unit_template

    try:
        ctx.api_key = read_api_key(ctx.layout.api_key)
    except (GptossctlError, OSError) as exc:
        ctx.render_error = f"the API key {ctx.live(ctx.layout.api_key)} is unreadable: {getattr(exc, 'message', exc)}"
        return
    try:
        shipped = sorted((ctx.release / "payload" / "profiles").glob("*.yaml"))
        profiles = [load_profile(p) for p in shipped] if shipped else load_profiles()
        (profile,) = [p for p in profiles if p.name == ctx.rec.get("profile")]
        ctx.rendered = render_release(
            unit_template(ctx.release), profile, ctx.layout, ctx.layout.live_path(ctx.release),
            Path(ctx.rec["python"]), ctx.api_key, port=int(ctx.rec["port"]), gpus=tuple(ctx.rec.get("gpus", ())),
            tensor_parallel=int(ctx.rec.get("tensor_parallel", 1)), served=str(ctx.rec["served_name"]))
    except (GptossctlError, KeyError, ValueError, OSError) as exc:
        ctx.render_error = f"cannot render the approved configuration again: {getattr(exc, 'message', exc)!s}"


def dropins(layout: Layout) -> list[Path]:
    """Drop-ins that change the instance's unit: its own, the template's, and every service's."""
    root, unit = layout.root, layout.unit_name
    found = []
    for base in ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        for d in (f"{unit}.d", "gptoss@.service.d", "service.d"):
            found += sorted((root / base / d).glob("*.conf"))
    return found


def _diff(expected: str, actual: str, name: str) -> list[str]:
    import difflib

    return [ln.rstrip("\n") for ln in difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                                           f"approved {name}", f"installed {name}", n=0, lineterm="")
            if not ln.startswith(("---", "+++", "@@"))]


def check_unit(ctx: _Ctx) -> CheckResult:
    unit_path = ctx.layout.unit_path
    locs = (ctx.live(unit_path),)
    installed = _read(unit_path)
    if installed is None:
        return CheckResult("config.unit", "fail", (f"{ctx.live(unit_path)} is missing",), locs)
    if ctx.rendered is None:
        return CheckResult("config.unit", "fail", (ctx.render_error or "no approved unit",), locs)
    bad = []
    expected = ctx.rendered["unit"]
    if installed != expected:
        bad += [f"{ctx.live(unit_path)} differs from the unit rendered from the signed template:"]
        bad += _diff(expected, installed, "unit")
    from gptossctl.service.install import UNIT_COPY

    if _read(ctx.release / UNIT_COPY) != expected:
        bad.append(f"{ctx.live(ctx.release / UNIT_COPY)} differs from the approved rendering")
    extra = dropins(ctx.layout)
    if extra:
        bad += [f"drop-in {ctx.live(p)} changes the unit" for p in extra]
        locs += tuple(ctx.live(p) for p in extra)
    if ctx.systemd.live:
        props = ctx.systemd.show(ctx.layout.unit_name, "NeedDaemonReload", "FragmentPath")
        if props.get("NeedDaemonReload") == "yes":
            bad.append("systemd runs a different unit than the file on disk (daemon-reload pending)")
        if props.get("FragmentPath") not in (None, "", str(ctx.layout.live_path(unit_path))):
            bad.append(f"systemd loads the unit from {props['FragmentPath']}, not {ctx.live(unit_path)}")
    if bad:
        return CheckResult("config.unit", "fail", _cap(bad), locs)
    return CheckResult("config.unit", "pass", (f"{ctx.live(unit_path)} is exactly the approved rendering "
                                               f"of release {ctx.rec.get('version')}; no drop-ins",), locs)


def check_release_files(ctx: _Ctx) -> CheckResult:
    from gptossctl.service.install import CONFIG, ENV_FILE

    locs = (ctx.live(ctx.release / CONFIG), ctx.live(ctx.release / ENV_FILE))
    if ctx.rendered is None:
        return CheckResult("config.release_files", "fail", (ctx.render_error or "no approved rendering",), locs)
    bad = []
    config = _read(ctx.release / CONFIG)
    if config is None:
        bad.append(f"{CONFIG} is missing")
    elif config != ctx.rendered["config"]:
        bad += [f"{CONFIG} differs from the signed profile's rendering:", *_diff(ctx.rendered["config"], config,
                                                                                 CONFIG)]
    if ctx.env_text is None:
        bad.append(f"{ENV_FILE} is missing or unreadable")
    elif ctx.env_text != ctx.rendered["env"]:
        want, got = parse_env(ctx.rendered["env"]), ctx.env or {}
        changed = [f"{ENV_FILE}: {k}: approved {_shown(k, want.get(k))}, found {_shown(k, got.get(k))}"
                   for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
        bad += changed or [f"{ENV_FILE}: comments or layout differ from the approved rendering"]
    if bad:
        return CheckResult("config.release_files", "fail", _cap(bad), locs)
    return CheckResult("config.release_files", "pass", (f"{CONFIG} and {ENV_FILE} are the approved rendering "
                                                        f"of profile {ctx.rec.get('profile')}",), locs)


def check_exposure(ctx: _Ctx) -> CheckResult:
    locs = (ctx.live(ctx.layout.unit_path),)
    graded = ctx.systemd.security(ctx.layout.unit_name)
    if graded is None:
        return CheckResult("config.exposure", "warn", ("systemd-analyze is not installed: the unit was not graded",),
                           locs)
    if graded.score is None:
        return CheckResult("config.exposure", "fail", (f"systemd-analyze gave no score: {graded.output.strip()[:300]}",),
                           locs)
    status = "pass" if graded.score <= ctx.opts.max_exposure else "fail"
    return CheckResult("config.exposure", status, (f"exposure {graded.score} {graded.label} (threshold "
                                                   f"{ctx.opts.max_exposure})",), locs)


def _unit_lines(ctx: _Ctx) -> list[str]:
    text = _read(ctx.layout.unit_path) or ""
    return [ln.strip() for ln in text.splitlines()]


def _expect_env(ctx: _Ctx, rule: str, want: dict[str, str], extra: list[str], forbidden: tuple[str, ...] = ()) -> CheckResult:
    from gptossctl.service.install import ENV_FILE

    env = ctx.env
    locs = (ctx.live(ctx.release / ENV_FILE),)
    if env is None:
        return CheckResult(rule, "fail", (f"{ENV_FILE} is missing or unreadable",), locs)
    bad = [f"{k}={_shown(k, env.get(k))}, required {v}" for k, v in want.items() if env.get(k) != v]
    bad += [f"{k} is set ({_shown(k, env[k])}): it sends data off the host" for k in forbidden if k in env]
    bad += extra
    if bad:
        return CheckResult(rule, "fail", _cap(bad), locs + (ctx.live(ctx.layout.unit_path),))
    return CheckResult(rule, "pass", (", ".join(f"{k}={v}" for k, v in want.items()),), locs)


def check_offline(ctx: _Ctx) -> CheckResult:
    lines = _unit_lines(ctx)
    extra = []
    if "IPAddressDeny=any" not in lines:
        extra.append("the unit lacks IPAddressDeny=any")
    allowed = [ln.split("=", 1)[1] for ln in lines if ln.startswith("IPAddressAllow=")]
    if any(a.strip() not in ("localhost", "127.0.0.1", "::1", "127.0.0.0/8") for a in allowed):
        extra.append(f"the unit allows traffic beyond loopback: IPAddressAllow={' '.join(allowed)}")
    res = _expect_env(ctx, "config.offline", {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                               "HF_HUB_DISABLE_TELEMETRY": "1"}, extra, ("HF_ENDPOINT",))
    if res.status == "pass":
        return CheckResult(res.id, "pass", (*res.evidence, "unit: IPAddressDeny=any, IPAddressAllow=localhost"),
                           res.locations)
    return res


def check_usage_stats(ctx: _Ctx) -> CheckResult:
    return _expect_env(ctx, "config.usage_stats", {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}, [],
                       ("VLLM_USAGE_STATS_SERVER",))


def _listeners(port: int) -> list[str]:
    """Addresses with a listening TCP socket on `port` in this network namespace (/proc/net/tcp{,6})."""
    import ipaddress

    out = []
    for name, width in (("tcp", 8), ("tcp6", 32)):
        try:
            rows = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            addr, _, hexport = cols[1].partition(":")
            if cols[3] != "0A" or int(hexport, 16) != port or len(addr) != width:
                continue
            raw = bytes.fromhex(addr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out.append(str(ipaddress.ip_address(raw)))
    return out


def check_bind(ctx: _Ctx) -> CheckResult:
    import yaml

    from gptossctl.service.install import CONFIG

    locs = (ctx.live(ctx.release / CONFIG),)
    try:
        host = (yaml.safe_load(_read(ctx.release / CONFIG) or "") or {}).get("host")
    except yaml.YAMLError:
        host = None
    approved = ctx.rec.get("host", "127.0.0.1")
    bad = []
    if host not in LOOPBACKS:
        bad.append(f"vllm.yaml binds {host!r}, not a loopback address")
    elif host != approved:
        bad.append(f"vllm.yaml binds {host}, install approved {approved}")
    evidence = [f"vllm.yaml binds {host}:{ctx.rec.get('port')}"]
    if ctx.systemd.live and ctx.active:
        listening = _listeners(int(ctx.rec.get("port", 8000)))
        outside = [a for a in listening if not (a.startswith("127.") or a == "::1")]
        if outside:
            bad.append(f"port {ctx.rec.get('port')} is listening on {', '.join(outside)}")
        evidence.append(f"listening on {', '.join(listening) or 'nothing'} (/proc/net/tcp)")
    if bad:
        return CheckResult("config.bind", "fail", _cap(bad), locs)
    return CheckResult("config.bind", "pass", tuple(evidence), locs)


def check_api_key(ctx: _Ctx) -> CheckResult:
    from gptossctl.service.install import ENV_FILE

    locs = (ctx.live(ctx.release / ENV_FILE), ctx.live(ctx.layout.api_key))
    env = ctx.env or {}
    bad = []
    if ctx.api_key is None:
        bad.append(f"{ctx.live(ctx.layout.api_key)} is missing or unreadable")
    elif env.get("VLLM_API_KEY") != ctx.api_key:
        bad.append("VLLM_API_KEY in service.env is absent or not the instance's key")
    elif len(ctx.api_key) < 32:
        bad.append(f"the key has {len(ctx.api_key)} characters, fewer than 32")
    evidence = ["VLLM_API_KEY is the instance's key (value not shown)"] if not bad else []
    if ctx.systemd.live and ctx.active and ctx.api_key:
        import httpx

        try:
            anon = httpx.get(f"{ctx.endpoint}/v1/models", timeout=10.0).status_code
            keyed = httpx.get(f"{ctx.endpoint}/v1/models", timeout=10.0,
                              headers={"Authorization": f"Bearer {ctx.api_key}"}).status_code
        except httpx.HTTPError as exc:
            bad.append(f"live probe of {ctx.endpoint}/v1/models failed: {type(exc).__name__}")
        else:
            probe = f"live probe: GET /v1/models without a key {anon}, with the key {keyed}"
            (bad if (anon, keyed) != (401, 200) else evidence).append(probe)
    elif not bad:
        evidence.append("service not running: not probed live")
    if bad:
        return CheckResult("access.api_key", "fail", _cap(bad), locs)
    return CheckResult("access.api_key", "pass", tuple(evidence), locs)


def _owner_uid(ctx: _Ctx) -> int:
    """Root on a live host; in a staged tree, whoever owns the tree (a test or packaging user)."""
    return 0 if not ctx.layout.staged else ctx.layout.root.stat().st_uid


def check_secrets(ctx: _Ctx) -> CheckResult:
    from gptossctl.service.install import ENV_FILE

    uid = _owner_uid(ctx)
    wanted = ((ctx.layout.api_key, 0o600), (ctx.release / ENV_FILE, 0o600), (ctx.layout.etc, 0o700))
    bad, evidence = [], []
    for p, mode in wanted:
        try:
            st = p.lstat()
        except OSError:
            bad.append(f"{ctx.live(p)} is missing")
            continue
        have = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            bad.append(f"{ctx.live(p)} is a symbolic link")
        elif have != mode or st.st_uid != uid:
            bad.append(f"{ctx.live(p)} is {have:04o} owned by uid {st.st_uid}; required {mode:04o} owned by uid {uid}")
        else:
            evidence.append(f"{ctx.live(p)} {have:04o} uid {uid}")
    locs = tuple(ctx.live(p) for p, _m in wanted)
    if bad:
        return CheckResult("access.secrets", "fail", _cap(bad), locs)
    return CheckResult("access.secrets", "pass", tuple(evidence), locs)


def _service_uid(ctx: _Ctx) -> int | None:
    for line in (_read(ctx.layout.root / "etc" / "passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[0] == SERVICE_USER:
            return int(parts[2])
    return None


def check_permissions(ctx: _Ctx) -> CheckResult:
    service_uid = _service_uid(ctx)
    trees = [ctx.layout.opt, ctx.layout.etc, ctx.layout.log_dir]
    singles = [ctx.layout.unit_path, ctx.layout.base, ctx.layout.unit_dir / "gptoss-compliance@.service",
               ctx.layout.unit_dir / "gptoss-compliance@.timer"]
    bad: list[str] = []
    seen = 0

    def look(p: str, st: os.stat_result) -> None:
        nonlocal seen
        seen += 1
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_mode & 0o002:
            bad.append(f"{ctx.live(Path(p))} is world-writable ({stat.S_IMODE(st.st_mode):04o})")
        elif service_uid is not None and st.st_uid == service_uid:
            bad.append(f"{ctx.live(Path(p))} is owned by the service user {SERVICE_USER}")

    for tree in trees:
        if not tree.exists():
            continue
        look(str(tree), tree.lstat())
        for d, dirs, files in os.walk(tree):
            for name in dirs + files:
                p = os.path.join(d, name)
                look(p, os.lstat(p))
    for p in singles:
        if p.exists() or p.is_symlink():
            look(str(p), p.lstat())
    if bad:
        return CheckResult("access.permissions", "fail", _cap(bad), tuple(sorted({b.split(" ")[0] for b in bad}))[:12])
    return CheckResult("access.permissions", "pass", (f"{seen} paths under {ctx.live(ctx.layout.opt)}, "
                                                      f"{ctx.live(ctx.layout.etc)}, {ctx.live(ctx.layout.log_dir)} "
                                                      "and the units: none world-writable or owned by "
                                                      f"{SERVICE_USER}",))


def check_license(ctx: _Ctx) -> CheckResult:
    m = ctx.manifest
    if m is None:
        return CheckResult("license.model", "fail", ("the signed manifest is unreadable",))
    listed = {f.path: f.size for f in m.files}
    bad, evidence = [], []
    for name in ("LICENSE", "USAGE_POLICY"):
        path = f"model/{name}"
        on_disk = ctx.release / "payload" / path
        if path not in listed:
            bad.append(f"{name} is not in the signed manifest: the model shipped without it")
        elif not on_disk.is_file():
            bad.append(f"{ctx.live(on_disk)} is missing")
        else:
            evidence.append(f"{name}: {listed[path]} bytes, signed")
    model_license = (m.components.get("model") or {}).get("license")
    evidence.append(f"model licence {model_license or 'not declared'} (signed manifest)")
    locs = tuple(ctx.live(ctx.release / "payload" / "model" / n) for n in ("LICENSE", "USAGE_POLICY"))
    if bad:
        return CheckResult("license.model", "fail", _cap(bad), locs)
    return CheckResult("license.model", "pass", tuple(evidence), locs)


def installed_dists(venv: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    out = {}
    for meta in venv.glob("lib/python*/site-packages/*.dist-info/METADATA"):
        name = version = None
        for line in (_read(meta) or "").splitlines():
            if line.startswith("Name: "):
                name = line[6:].strip()
            elif line.startswith("Version: "):
                version = line[9:].strip()
            elif not line.strip():
                break
        if name and version:
            out[canonicalize_name(name)] = version
    return out


def check_sbom(ctx: _Ctx) -> CheckResult:
    from packaging.utils import canonicalize_name

    path = ctx.release / "payload" / "sbom" / "bom.cdx.json"
    locs = (ctx.live(path),)
    m = ctx.manifest
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
    if ctx.rec.get("external_env"):
        return CheckResult("provenance.sbom", "warn", (*evidence, "the service runs the site's environment "
                                                       f"{ctx.rec.get('python')}, which the SBOM does not cover"), locs)
    installed = installed_dists(ctx.release / "venv")
    bad = [f"{n} {installed[n]} is installed but not in the SBOM" for n in sorted(set(installed) - set(listed))]
    bad += [f"{n} {listed[n]} is in the SBOM but not installed" for n in sorted(set(listed) - set(installed))]
    bad += [f"{n}: SBOM {listed[n]}, installed {installed[n]}" for n in sorted(set(listed) & set(installed))
            if listed[n] != installed[n]]
    if bad:
        return CheckResult("provenance.sbom", "fail", _cap(bad), locs + (ctx.live(ctx.release / "venv"),))
    return CheckResult("provenance.sbom", "pass", (*evidence, f"the environment holds exactly those "
                                                   f"{len(installed)} packages at those versions"), locs)


def check_audit(ctx: _Ctx) -> CheckResult:
    from gptossctl.service import audit

    log = ctx.layout.log_dir / audit.LOG
    locs = (ctx.live(log),)
    if not log.exists():
        return CheckResult("audit.chain", "fail", (f"{ctx.live(log)} is missing, yet an instance is installed: "
                                                   "the log was removed",), locs)
    try:
        r = audit.verify(ctx.layout.log_dir, anchor=ctx.layout.audit_anchor)
    except CheckFailed as exc:
        return CheckResult("audit.chain", "fail", _cap([f"{f.subject}: {f.message}" for f in exc.findings]), locs)
    return CheckResult("audit.chain", "pass", (f"{r.entries} entries, chain, head and anchor intact",), locs)


def check_running(ctx: _Ctx) -> CheckResult:
    from gptossctl.service.install import _unit_release

    locs = (ctx.live(ctx.layout.unit_path),)
    unit_release = _unit_release(ctx.layout)
    if unit_release != ctx.rec.get("version"):
        return CheckResult("service.running", "fail", (f"the unit runs release {unit_release}, current is "
                                                       f"{ctx.rec.get('version')}: an install was interrupted",), locs)
    if not ctx.systemd.live:
        return CheckResult("service.running", "pass", (f"staged tree: the unit runs release {unit_release}; "
                                                       "not started here",), locs)
    if not ctx.active:
        state = ctx.systemd.active_state(ctx.layout.unit_name)
        return CheckResult("service.running", "warn", (f"{ctx.layout.unit_name} is {state}",), locs)
    import httpx

    try:
        code = httpx.get(f"{ctx.endpoint}/health", timeout=10.0).status_code
    except httpx.HTTPError as exc:
        return CheckResult("service.running", "fail", (f"active, but /health failed: {type(exc).__name__}",), locs)
    return CheckResult("service.running", "pass" if code == 200 else "fail",
                       (f"active on release {unit_release}; GET /health {code}",), locs)


CHECKS: tuple[Callable[[_Ctx], CheckResult], ...] = (
    check_signatures, check_expiry, check_payload, check_environment, check_unit, check_release_files,
    check_exposure, check_offline, check_usage_stats, check_bind, check_api_key, check_secrets, check_permissions,
    check_license, check_sbom, check_audit, check_running)


# ---------------------------------------------------------------- the command


def run_checks(root: Path, instance: str, opts: ComplianceOptions = ComplianceOptions()) -> ComplianceReport:
    from gptossctl.service.install import ENV_FILE, read_release
    from gptossctl.service.releases import current_version

    layout = Layout(root, check_instance(instance))
    if not layout.opt.is_dir():
        raise UsageError(f"instance {instance} is not installed under {root}", code="compliance.not_installed",
                         hint="see 'gptossctl status' for the installed instances")
    if layout.etc.exists() and not os.access(layout.etc, os.R_OK | os.X_OK):
        raise EnvironmentNotReady(f"{layout.etc} is not readable by this user", code="compliance.not_root",
                                  hint="run as root (sudo): the check reads the API key and root-only files")
    systemd = Systemd(None if not layout.staged else layout.root)
    now = opts.now or datetime.now(UTC)
    cur = current_version(layout)
    report = ComplianceReport(instance, root, cur, now)
    rec = read_release(layout.release(cur)) if cur is not None else {}
    if not rec:
        report.checks.append(CheckResult("release.current", "fail", (
            f"no current release under {layout.live_path(layout.opt)}" if cur is None
            else f"release {cur}'s release.json is missing or unreadable",), (str(layout.live_path(layout.opt)),)))
        report.checks.append(check_audit(_Ctx(layout, systemd, opts, now, layout.opt, {})))
        return report
    ctx = _Ctx(layout, systemd, opts, now, layout.release(cur), rec)
    report.checks.append(CheckResult("release.current", "pass", (f"release {cur} ({rec.get('bundle')}, profile "
                                                                 f"{rec.get('profile')}) installed "
                                                                 f"{rec.get('installed_at')}",),
                                     (ctx.live(ctx.release),)))
    ctx.active = systemd.live and systemd.active_state(layout.unit_name) == "active"
    ctx.env_text = _read(ctx.release / ENV_FILE)
    _verify(ctx)
    _rerender(ctx)
    report.checks += [check(ctx) for check in CHECKS]
    return report


# ---------------------------------------------------------------- outputs


def to_junit(report: ComplianceReport) -> bytes:
    from gptossctl.probe.junit import Case, junit_xml

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
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

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
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), reg)
    os.chmod(path, 0o644)
