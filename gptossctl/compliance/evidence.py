"""What one compliance run reads, read once and then frozen: the current release and its record, the
trust, one verification pass over every byte of the release (signatures, dates, payload), the approved
configuration rendered again from the signed template and profile, service.env, and whether the unit runs.
Every check is a function of this evidence; none reads the disk again for the same thing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import distributions
from pathlib import Path

from gptossctl.adapters.openai_http import read_api_key
from gptossctl.adapters.systemd import Systemd
from gptossctl.bundle.dsse import parse_envelope
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.manifest import Manifest, parse_manifest
from gptossctl.bundle.verify import TrustPolicy, check_envelope, verify_bundle
from gptossctl.compliance.units import UnitView, installed_units, view
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, UsageError
from gptossctl.fsutil import read_nofollow
from gptossctl.hardware.profiles import load_profile, load_profiles
from gptossctl.install import audit
from gptossctl.install.environment import LISTING
from gptossctl.install.layout import Layout, check_instance
from gptossctl.install.release import RELEASE_JSON, ReleaseRecord, current_version, read_release
from gptossctl.install.render import ships_vocab
from gptossctl.install.seal import differences, newest_seal
from gptossctl.install.serving import ServingSet, render_set, serving_set
from gptossctl.install.trust import current_trust, weaker_than_host
from gptossctl.secretnames import SECRET_NAME

LOOPBACKS = ("127.0.0.1", "::1", "localhost")
MAX_EVIDENCE = 12


@dataclass(frozen=True)
class ComplianceOptions:
    policy: TrustPolicy | None = None  # an auditor's own --trust: checked beside the instance's root, never instead
    max_exposure: float = 2.0
    expiry_warning: timedelta = timedelta(days=30)
    now: datetime | None = None


@dataclass(frozen=True)
class Chain:
    """The audit chain as read once: its state (None when it cannot be read, with why)."""

    state: audit.ChainState | None
    error: str | None = None

    @property
    def records(self) -> tuple[dict[str, object], ...]:
        return self.state.records if self.state is not None else ()

    @property
    def broken(self) -> bool:
        return self.state is None or bool(self.state.findings)


@dataclass(frozen=True)
class Sealed:
    """The newest seal of the current release in the chain, and every sealed file that differs from it."""

    seal: dict[str, object] | None
    diffs: tuple[tuple[Path, str], ...] = ()

    def changed(self, name: str) -> bool:
        return any(p.name == name for p, _m in self.diffs)

    @property
    def record_changed(self) -> bool:
        """release.json is not the record sealed at install: nothing read from it is trusted."""
        return self.changed(RELEASE_JSON)

    @property
    def listing_changed(self) -> bool:
        return self.changed(LISTING)


def read_chain(layout: Layout) -> Chain:
    """The chain of the instance's root; the instance checked counts as installed even without a current
    release (its folder is there: compliance only opens an installed instance), so a missing log is caught."""
    installed = sorted({*audit.installed_instances(layout.root), layout.instance})
    try:
        return Chain(audit.inspect(layout.log_dir, anchor=layout.audit_anchor, installed=installed))
    except GptossctlError as exc:
        return Chain(None, exc.message)


def checked_now(chain: Chain, now: datetime | None) -> tuple[datetime, CheckFailed | None]:
    """audit.checked_now over a chain that verifies (a broken one fails audit.chain and is trusted for nothing):
    the time expiry is judged at, and the refusal when the clock is behind the chain (bundle.expiry fails)."""
    try:
        return audit.checked_now(() if chain.broken else chain.records, now), None
    except CheckFailed as exc:
        return now or datetime.now(UTC), exc


def sealed(layout: Layout, rec: ReleaseRecord, chain: Chain) -> Sealed:
    seal = newest_seal(chain.records, layout.instance, rec.version)
    return Sealed(seal, tuple(differences(layout, rec.version, seal)) if seal is not None else ())


RECORD_CHANGED = (f"{RELEASE_JSON} differs from the record sealed in the audit chain at install: what it says "
                  "(interpreter, environment, profile, ports) is not trusted")


@dataclass(frozen=True)
class Evidence:
    layout: Layout
    systemd: Systemd
    opts: ComplianceOptions
    now: datetime
    release: Path
    rec: ReleaseRecord
    serving: ServingSet  # the units that serve the release: the replicas and the router (install/serving.py)
    clock_behind: CheckFailed | None = None  # the clock is behind the audit chain: expiry cannot be judged
    verify_findings: tuple[Finding, ...] = ()
    manifest: Manifest | None = None
    policy_note: str = ""
    trust_state: str = "root"  # root | legacy (installed before trust roots) | none | unreadable
    signed_by: tuple[str, ...] = ()  # "name (key id)" of each counted signature
    api_key: str | None = None
    rendered: dict[str, str] | None = None
    render_error: str | None = None
    active: bool = False
    # Each member's environment file (name -> text, None when unreadable), read once; `rendered` is keyed by the
    # release's file names, the router's included.
    member_envs: dict[str, str | None] = field(default_factory=dict)
    # Every unit gptossctl installed for the instance (serving, router, compliance, canaries) as systemd
    # applies it: the file it loads and every drop-in (compliance.units).
    units: tuple[UnitView, ...] = ()
    chain: Chain = field(default_factory=lambda: Chain(None, "not read"))
    sealed: Sealed = field(default_factory=lambda: Sealed(None))

    def live(self, p: Path) -> str:
        return str(self.layout.live_path(p))

    @property
    def endpoint(self) -> str:
        return self.rec.endpoint


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip().strip('"')
    return out


def read_text(p: Path) -> str | None:
    """The text of a file, None when it is missing, unreadable, not text, or a symbolic link (never followed:
    a link where a rendered file should be is tampering, and access.permissions names it)."""
    try:
        return read_nofollow(p).decode()
    except (OSError, UnicodeDecodeError):
        return None


def shown(key: str, value: str | None) -> str:
    if value is None:
        return "(absent)"
    return "(redacted)" if SECRET_NAME.search(key) else value


def cap(lines: Sequence[str]) -> tuple[str, ...]:
    lines = list(lines)
    if len(lines) > MAX_EVIDENCE:
        return (*lines[:MAX_EVIDENCE], f"... and {len(lines) - MAX_EVIDENCE} more")
    return tuple(lines)


def is_signature(f: Finding) -> bool:
    return f.code.startswith("signature.")


def is_date(f: Finding) -> bool:
    return f.code in ("bundle.expired", "bundle.not_yet_valid")


def open_instance(root: Path, instance: str) -> Layout:
    layout = Layout(root, check_instance(instance))
    if not layout.opt.is_dir():
        raise UsageError(f"instance {instance} is not installed under {root}", code="compliance.not_installed",
                         hint="see 'gptossctl status' for the installed instances")
    if layout.etc.exists() and not os.access(layout.etc, os.R_OK | os.X_OK):
        raise EnvironmentNotReady(f"{layout.etc} is not readable by this user", code="compliance.not_root",
                                  hint="run as root (sudo): the check reads the API key and root-only files")
    return layout


def current(layout: Layout) -> tuple[int | None, ReleaseRecord | None]:
    cur = current_version(layout)
    return cur, (read_release(layout.release(cur)) if cur is not None else None)


def gather(layout: Layout, rec: ReleaseRecord, opts: ComplianceOptions) -> Evidence:
    """Read everything once; the checks then only look."""
    systemd = Systemd(None if not layout.staged else layout.root)
    release = layout.release(rec.version)
    ss = serving_set(layout, rec)
    chain = read_chain(layout)
    now, clock_behind = checked_now(chain, opts.now)
    policy, note, state, host = _policy(layout)
    policy = replace(policy, now=now) if policy is not None else None
    findings, manifest, signed_by = _verify(layout, release, policy, note)
    findings += _auditor_findings(release, replace(opts.policy, now=now) if opts.policy is not None else None)
    findings += host
    seal = sealed(layout, rec, chain)
    api_key, rendered, render_error = _rerender(layout, release, rec, manifest, seal)
    return Evidence(layout=layout, systemd=systemd, opts=opts, now=now, clock_behind=clock_behind, release=release,
                    rec=rec, serving=ss, verify_findings=findings, manifest=manifest, policy_note=note, trust_state=state,
                    signed_by=signed_by,
                    api_key=api_key,
                    rendered=rendered, render_error=render_error,
                    active=systemd.live and systemd.active_state(ss.front) == "active",
                    member_envs={m.files[1]: read_text(release / m.files[1]) for m in ss.members},
                    units=tuple(view(layout, systemd, u) for u in installed_units(layout, rec, release, rendered,
                                                                                   render_error)),
                    chain=chain, sealed=seal)


def _policy(layout: Layout) -> tuple[TrustPolicy | None, str, str, tuple[Finding, ...]]:
    """The instance's trust root, read once (never a directory listing): (policy, where it came from, state,
    findings when another instance on this host requires more or other signers: a second, weaker door)."""
    try:
        root, note = current_trust(layout)
    except GptossctlError as exc:
        return None, f"the trust root is unreadable: {exc.message}", "unreadable", ()
    if root is None:
        return None, "no trust root recorded at install", "none", ()
    host = tuple(Finding("signature.weaker_than_host", "trust root", p) for p in weaker_than_host(layout, root))
    return root.policy("release"), note, "root" if note.startswith("trust root") else "legacy", host


def _auditor_findings(release: Path, policy: TrustPolicy | None) -> tuple[Finding, ...]:
    """An auditor's --trust is a second check beside the root: both must pass."""
    if policy is None:
        return ()
    try:
        checked = check_envelope(parse_envelope((release / ENVELOPE).read_bytes()), policy)
    except (GptossctlError, OSError):
        return ()  # the root's own pass reports an unreadable envelope
    return tuple(Finding(f.code, f"--trust {f.subject}", f.message, f.hint) for f in checked.findings
                 if is_signature(f))


def _verify(layout: Layout, release: Path, policy: TrustPolicy | None,
            note: str) -> tuple[tuple[Finding, ...], Manifest | None, tuple[str, ...]]:
    """One pass over the release's bytes: signatures, dates and every payload file (verify_bundle); and who
    signed it, by name beside the key id."""
    findings: list[Finding] = []
    manifest = None
    signed_by: tuple[str, ...] = ()
    try:
        manifest = verify_bundle(release, policy).manifest
    except CheckFailed as exc:
        # An unknown co-signer is a note, not a failure, unless the root requires known signers.
        findings = [f for f in exc.findings if f.code != "signature.unknown_signer"
                    or (policy is not None and policy.require_known_signers)]
        try:
            manifest = parse_manifest(parse_envelope((release / ENVELOPE).read_bytes()).payload)
        except (GptossctlError, OSError):
            manifest = None
    except UsageError as exc:
        findings = [Finding("bundle.unreadable", str(layout.live_path(release)), exc.message)]
    if policy is None:
        findings.append(Finding("signature.no_trust", "trust", note))
    else:
        try:  # the release holds files beside the bundle's, so the names come from the envelope alone
            good = check_envelope(parse_envelope((release / ENVELOPE).read_bytes()), policy).signers
            signed_by = tuple(f"{s['name']} ({s['keyid']})" for s in policy.signed_by(good))  # whole: auditors match it
        except (GptossctlError, OSError):
            pass  # reported by verify_bundle above
    return tuple(findings), manifest, signed_by


def _rerender(layout: Layout, release: Path, rec: ReleaseRecord, manifest: Manifest | None,
              seal: Sealed) -> tuple[str | None, dict[str, str] | None, str | None]:
    """(api key, the approved rendering, why there is none) from the recorded inputs and the signed files. The
    record is one input: one that differs from its seal renders nothing (an edited record and host file would
    agree)."""
    try:
        api_key = read_api_key(layout.api_key)
    except GptossctlError as exc:
        return None, None, f"the API key {layout.live_path(layout.api_key)} is unreadable: {exc.message}"
    if seal.record_changed:
        return api_key, None, RECORD_CHANGED
    if manifest is None:
        return api_key, None, "the signed manifest is unreadable: nothing to render the approved configuration from"
    try:
        shipped = sorted((release / "payload" / "profiles").glob("*.yaml"))
        profiles = [load_profile(p) for p in shipped] if shipped else load_profiles()
        matching = [p for p in profiles if p.name == rec.profile]
        if len(matching) != 1:
            return api_key, None, f"the recorded profile {rec.profile!r} is not among the release's profiles"
        rendered = render_set(matching[0], layout, layout.live_path(release), rec, api_key,
                              vocab=ships_vocab(manifest))
    except (GptossctlError, OSError) as exc:
        return api_key, None, f"cannot render the approved configuration again: {getattr(exc, 'message', exc)!s}"
    return api_key, rendered, None


def installed_dists(venv: Path) -> dict[str, str]:
    """Name -> version of every distribution installed in a venv (importlib.metadata reads the METADATA)."""
    from packaging.utils import canonicalize_name

    paths = [str(p) for p in venv.glob("lib/python*/site-packages")]
    out: dict[str, str] = {}
    for dist in distributions(path=paths):
        name, version = dist.metadata["Name"], dist.version
        if name and version:
            out[str(canonicalize_name(name))] = version
    return out
