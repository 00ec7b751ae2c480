"""What one compliance run reads, read once and then frozen: the current release and its record, the
trust, one verification pass over every byte of the release (signatures, dates, payload), the approved
configuration rendered again from the signed template and profile, service.env, and whether the unit runs.
Every check is a function of this evidence; none reads the disk again for the same thing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import distributions
from pathlib import Path

from gptossctl.adapters.openai_http import read_api_key
from gptossctl.adapters.systemd import Systemd
from gptossctl.bundle.dsse import parse_envelope
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.manifest import Manifest, parse_manifest
from gptossctl.bundle.verify import TrustPolicy, verify_bundle
from gptossctl.compliance.units import UnitView, installed_units, view
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, UsageError
from gptossctl.fsutil import read_nofollow
from gptossctl.hardware.profiles import load_profile, load_profiles
from gptossctl.install.layout import Layout, check_instance
from gptossctl.install.release import ENV_FILE, ReleaseRecord, current_version, read_release
from gptossctl.install.render import render_release, ships_vocab, unit_template
from gptossctl.install.replicas import render_replicated
from gptossctl.install.trust import load_trust
from gptossctl.secretnames import SECRET_NAME

LOOPBACKS = ("127.0.0.1", "::1", "localhost")
MAX_EVIDENCE = 12


@dataclass(frozen=True)
class ComplianceOptions:
    policy: TrustPolicy | None = None  # None: the trust recorded at install
    max_exposure: float = 2.0
    expiry_warning: timedelta = timedelta(days=30)
    now: datetime | None = None


@dataclass(frozen=True)
class Evidence:
    layout: Layout
    systemd: Systemd
    opts: ComplianceOptions
    now: datetime
    release: Path
    rec: ReleaseRecord
    verify_findings: tuple[Finding, ...] = ()
    manifest: Manifest | None = None
    policy_note: str = ""
    api_key: str | None = None
    rendered: dict[str, str] | None = None
    render_error: str | None = None
    active: bool = False
    env_text: str | None = None  # service.env, read once
    env: dict[str, str] | None = field(default=None)
    # With replicas: each replica's environment file (name -> text, None when unreadable), read once;
    # `rendered` is then keyed by the release's file names, the router's included.
    replica_envs: dict[str, str | None] = field(default_factory=dict)
    # Every unit gptossctl installed for the instance (serving, router, compliance, canaries) as systemd
    # applies it: the file it loads and every drop-in (compliance.units).
    units: tuple[UnitView, ...] = ()

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
    env_text = read_text(release / ENV_FILE)
    policy, note = _policy(layout, opts)
    findings, manifest = _verify(layout, release, policy, note)
    api_key, rendered, render_error = _rerender(layout, release, rec, manifest)
    unit = layout.router_unit_name if rec.replicated else layout.unit_name  # what answers at the endpoint
    return Evidence(layout=layout, systemd=systemd, opts=opts, now=opts.now or datetime.now(UTC), release=release,
                    rec=rec, verify_findings=findings, manifest=manifest, policy_note=note, api_key=api_key,
                    rendered=rendered, render_error=render_error,
                    active=systemd.live and systemd.active_state(unit) == "active",
                    env_text=env_text, env=None if env_text is None else parse_env(env_text),
                    replica_envs={r.files[1]: read_text(release / r.files[1]) for r in rec.replicas},
                    units=tuple(view(layout, systemd, u) for u in installed_units(layout, rec, release, rendered,
                                                                                   render_error)))


def _policy(layout: Layout, opts: ComplianceOptions) -> tuple[TrustPolicy | None, str]:
    if opts.policy is not None:
        return opts.policy, "trust given on the command line"
    try:
        policy = load_trust(layout)
    except GptossctlError as exc:
        return None, f"the recorded trust is unreadable: {exc.message}"
    return policy, "trust recorded at install" if policy else "no trust recorded at install"


def _verify(layout: Layout, release: Path, policy: TrustPolicy | None,
            note: str) -> tuple[tuple[Finding, ...], Manifest | None]:
    """One pass over the release's bytes: signatures, dates and every payload file (verify_bundle)."""
    findings: list[Finding] = []
    manifest = None
    try:
        manifest = verify_bundle(release, policy).manifest
    except CheckFailed as exc:
        findings = list(exc.findings)
        try:
            manifest = parse_manifest(parse_envelope((release / ENVELOPE).read_bytes()).payload)
        except (GptossctlError, OSError):
            manifest = None
    except UsageError as exc:
        findings = [Finding("bundle.unreadable", str(layout.live_path(release)), exc.message)]
    if policy is None:
        findings.append(Finding("signature.no_trust", "trust", note))
    return tuple(findings), manifest


def _rerender(layout: Layout, release: Path, rec: ReleaseRecord,
              manifest: Manifest | None) -> tuple[str | None, dict[str, str] | None, str | None]:
    """(api key, the approved rendering, why there is none) from the recorded inputs and the signed files."""
    try:
        api_key = read_api_key(layout.api_key)
    except GptossctlError as exc:
        return None, None, f"the API key {layout.live_path(layout.api_key)} is unreadable: {exc.message}"
    if manifest is None:
        return api_key, None, "the signed manifest is unreadable: nothing to render the approved configuration from"
    try:
        shipped = sorted((release / "payload" / "profiles").glob("*.yaml"))
        profiles = [load_profile(p) for p in shipped] if shipped else load_profiles()
        matching = [p for p in profiles if p.name == rec.profile]
        if len(matching) != 1:
            return api_key, None, f"the recorded profile {rec.profile!r} is not among the release's profiles"
        if rec.replicated:
            return api_key, render_replicated(release, matching[0], layout, layout.live_path(release), rec,
                                              api_key, vocab=ships_vocab(manifest)), None
        rendered = render_release(unit_template(release), matching[0], layout, layout.live_path(release),
                                  Path(rec.python), api_key, port=rec.port, gpus=rec.gpus,
                                  tensor_parallel=rec.tensor_parallel, served=rec.served_name,
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
