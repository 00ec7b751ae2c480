"""Operating installed instances: `status`, `rollback` to a release still on disk, `uninstall` (with or without
`--purge`). Every change is recorded in the audit log, refusals too."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gptossctl.adapters.openai_http import health
from gptossctl.adapters.systemd import Systemd, delete_user
from gptossctl.bundle.layout import MANIFEST
from gptossctl.bundle.verify import check_envelope, read_envelope, verify_bundle
from gptossctl.errors import CheckFailed, Finding, GptossctlError
from gptossctl.fsutil import read_nofollow
from gptossctl.install import audit
from gptossctl.install.activate import wipe_kernel_caches
from gptossctl.install.environment import LISTING, VENV
from gptossctl.install.layout import SERVICE_USER, Layout, check_instance, install_lock
from gptossctl.install.lifecycle import InstallResult
from gptossctl.install.release import (
    LOOPBACK,
    RELEASE_JSON,
    ReleaseRecord,
    current_version,
    installed_versions,
    read_release,
    switch_current,
    unit_release,
)
from gptossctl.install.rolling import (
    Activation,
    bring_up,
    can_roll,
    install_serving_units,
    installed_units,
    restore_release,
    retire,
    roll,
)
from gptossctl.install.seal import make_seal, require_as_sealed
from gptossctl.install.serving import serving_set
from gptossctl.install.steps import StepCallback, Steps
from gptossctl.install.timer import remove_compliance_timer
from gptossctl.install.trust import choose_api_key, current_trust


def _systemd(layout: Layout) -> Systemd:
    return Systemd(None if not layout.staged else layout.root)


def status(root: Path = Path("/"), instance: str | None = None) -> list[dict[str, Any]]:
    names = [check_instance(instance)] if instance else Layout(root).instances()
    out = []
    for name in names:
        layout = Layout(root, name)
        cur = current_version(layout)
        out.append(_status(layout, _systemd(layout), cur, read_release(layout.release(cur)) if cur is not None
                           else None))
    return out


def _unit_status(systemd: Systemd, name: str, path: Path, url: str | None) -> tuple[str, int | str | None]:
    state = systemd.active_state(name) if path.exists() else "not installed"
    return state, (health(url) if state == "active" and url is not None else None)


def _status(layout: Layout, systemd: Systemd, cur: int | None, rec: ReleaseRecord | None) -> dict[str, Any]:
    """The instance is the unit at its endpoint (the router; a legacy release's one vLLM), with each replica
    behind it; consistent when every member's unit runs the current release."""
    ss = serving_set(layout, rec) if rec is not None else None
    front = ss.front if ss is not None else layout.router_unit_name
    state, answer = _unit_status(systemd, front, layout.unit_dir / front, rec.endpoint if rec else None)
    members = list(ss.members) if ss is not None else []
    releases = [unit_release(layout, m.path) for m in members]
    replicas = []
    for m in members:
        if m.unit == front:
            continue
        m_state, m_answer = _unit_status(systemd, m.unit, m.path, m.endpoint)
        replicas.append({"index": m.replica.index if m.replica else 0, "unit": m.unit, "port": m.port,
                         "gpus": list(m.gpus), "state": m_state, "health": m_answer,
                         "release": unit_release(layout, m.path)})
    in_unit = next((v for v in releases if v != cur), cur) if releases else None  # an interrupted upgrade shows it
    return {"instance": layout.instance, "unit": front, "state": state, "health": answer, "version": cur,
            "profile": rec.profile if rec else None, "endpoint": rec.endpoint if rec else None,
            "installed": installed_versions(layout), "unit_release": in_unit,
            "consistent": rec is not None and all(v == cur for v in releases) if cur is not None else True,
            "expires": rec.expires if rec else None,
            "record": "ok" if rec else ("missing" if cur is None else "unreadable"),
            "shape": None if ss is None else "legacy single (install again to move it behind the router)"
            if ss.legacy else "router", "replicas": replicas}


@dataclass(frozen=True)
class StatusReport:
    root: Path
    rows: list[dict[str, Any]]

    @staticmethod
    def healthy(r: dict[str, Any]) -> bool:
        """Active (or staged), serving the current release and answering /health; with replicas, each of them
        too (a replica down is a degraded instance even while the router still answers)."""
        return all(u["state"] in ("active", "staged") and u["health"] in (200, None)
                   and (u["state"] != "active" or u["health"] == 200) for u in [r, *r.get("replicas", [])]) \
            and r["consistent"]

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
                        f"release record {r['record']}" + "".join(
                            f"; {x['unit']} is {x['state']}, /health {x['health'] or '-'}, release {x['release']}"
                            for x in r.get("replicas", []) if not self.healthy({**x, "consistent": True})),
                        hint=f"journalctl -u {r['unit']}; run the install again to converge, or gptossctl rollback")
                for r in self.rows if not self.healthy(r)]

    def to_dict(self) -> dict[str, Any]:
        return {"instances": self.rows, "ok": self.ok}


def status_report(root: Path = Path("/"), instance: str | None = None) -> StatusReport:
    return StatusReport(root, status(root, instance))


def rollback(root: Path, instance: str, *, to: int | None = None, health_timeout: float = 1800.0,
             on_step: StepCallback | None = None, allow_expired: bool = False,
             now: datetime | None = None) -> InstallResult:
    command = ["rollback", f"--instance={instance}"] + ([f"--to={to}"] if to is not None else []) + \
        (["--allow-expired"] if allow_expired else [])
    try:
        checked = audit.require_intact(root)  # no change its entry could not record
        r = _rollback(root, instance, to=to, health_timeout=health_timeout, on_step=on_step, checked=checked,
                      allow_expired=allow_expired, now=now)
    except GptossctlError as exc:
        audit.record(root, command, f"failed: {exc.code}", instance=instance, detail=exc.message, failure=exc)
        raise
    rec = read_release(r.release)
    sealed = make_seal(Layout(root, instance), r.version)
    trust = next((s.detail for s in r.steps if s.step == "trust"), "")
    audit.record(root, command, "ok", instance=instance, digest=rec.manifest_sha256 if rec else None,
                 detail=f"release {r.previous} -> {r.version}" + (f"; {trust}" if trust else ""),
                 attach={"seal": sealed} if sealed else None, checked=checked)
    return r


def _rollback(root: Path, instance: str, *, to: int | None, health_timeout: float,
              on_step: StepCallback | None, checked: audit.AuditReport, allow_expired: bool = False,
              now: datetime | None = None) -> InstallResult:
    layout = Layout(root, check_instance(instance))
    systemd = _systemd(layout)
    cur = current_version(layout)
    older = [v for v in installed_versions(layout) if cur is None or v < cur]
    target = to if to is not None else (older[-1] if older else None)
    rec = read_release(layout.release(target)) if target is not None else None
    if target is None or rec is None:
        raise CheckFailed(f"no release to roll back to (installed: {installed_versions(layout) or 'none'})",
                          code="rollback.no_release", hint="install the bundle you want instead")
    steps = Steps(on_step)
    with steps("verify", f"re-hashing release {target} against its signed manifest"):
        check_release_intact(layout, rec)
        require_as_sealed(layout, target, checked.records, code="rollback.drift",
                          hint=f"reinstall release {target} from its bundle (gptossctl install BUNDLE --repair), or "
                               "roll back to another release; 'gptossctl compliance check' shows the same drift")
    with steps("trust", f"release {target} against the current trust root") as d:
        d.append(check_release_trusted(layout, target, allow_expired=allow_expired, now=now))
    result = InstallResult(layout.instance, target, cur, rec.profile, rec.endpoint,
                           serving_set(layout, rec).front,
                           layout.release(target), layout.staged, False, steps=steps.records, replicas=rec.replicas)
    act = Activation(layout, systemd, steps, choose_api_key(layout, layout.release(target)), health_timeout,
                     smoke=False)
    with install_lock(layout):
        with steps("caches", "emptying the service's kernel caches (torch.compile, inductor, Triton, FlashInfer)") as d:
            d.append(", ".join(wipe_kernel_caches(layout)) or "none yet")
        if layout.staged:
            with steps("unit", f"installing the unit of release {target}"):
                install_serving_units(layout, systemd, layout.release(target), act.api_key)
            switch_current(layout, target)
            return result
        try:
            _activate_target(act, rec, cur)
        except GptossctlError as exc:
            outcome = "" if exc.data.get("restored") else "; " + restore_release(act, cur)
            unit = str(exc.data.get("unit", result.unit))
            raise CheckFailed(f"release {target} did not come up: {exc.message}{outcome}", code="rollback.failed",
                              findings=[*exc.findings, Finding("install.journal", unit,
                                                               systemd.journal_tail(unit, 30))],
                              hint="the journal tail says why; the previous release keeps serving") from None
        switch_current(layout, target)
        result.started = True
        return result


def check_release_trusted(layout: Layout, version: int, *, allow_expired: bool, now: datetime | None = None) -> str:
    """The release about to serve again must be signed as the CURRENT trust root requires, whatever was trusted
    when it was installed: a signer removed or revoked since then refuses it (rollback.untrusted). A bundle past
    its expiry serves again only with --allow-expired (rollback.expired)."""
    root, note = current_trust(layout)
    if root is None:
        raise CheckFailed(f"instance {layout.instance} has no trust to check release {version} against",
                          code="rollback.untrusted", hint="reinstall the bundle you want (gptossctl install BUNDLE "
                          "--trust KEY.pub): the install sets the instance's trust root")
    checked = check_envelope(read_envelope(layout.release(version)), root.policy("release", now=now))
    signature = [f for f in checked.findings if f.code.startswith("signature.")]
    if signature:
        raise CheckFailed(f"release {version} is not signed as the current trust requires ({note})",
                          code="rollback.untrusted", findings=signature,
                          hint="roll back to a release the current signers signed, or install a bundle they signed")
    expired = [f for f in checked.findings if f.code == "bundle.expired"]
    if expired and not allow_expired:
        raise CheckFailed(f"release {version}'s bundle has expired", code="rollback.expired", findings=expired,
                          hint="pass --allow-expired to serve it anyway (audited), or install a fresh bundle")
    signers = ", ".join(f"{root.name_of(k)} ({k[:16]})" for k in checked.signers)
    return f"signed by {signers} under {note}" + ("; EXPIRED, served by --allow-expired" if expired else "")


def check_release_intact(layout: Layout, rec: ReleaseRecord) -> None:
    """The release about to serve again is what was installed: every payload byte matches its signed manifest
    (the manifest being the one recorded at install), the rendered files are the ones recorded, and the record
    binds only where install allows. Exit 1 (rollback.drift) naming each difference; nothing switched."""
    release = layout.release(rec.version)
    ss = serving_set(layout, rec)
    own = {VENV, LISTING, RELEASE_JSON, *rec.rendered, *(n for m in ss.members for n in m.files),
           *(ss.router.files if ss.router else ())}
    findings: list[Finding] = []
    try:
        verify_bundle(release, None)  # integrity only: what was trusted was decided at install
    except CheckFailed as exc:
        findings += [f for f in exc.findings if not (f.code == "bundle.extra_file" and f.subject in own)
                     and not f.code.startswith("signature.") and f.code not in ("bundle.expired", "bundle.not_yet_valid")]
    except GptossctlError as exc:
        findings.append(Finding("bundle.unreadable", str(release), exc.message))
    try:
        digest = hashlib.sha256(read_nofollow(release / MANIFEST, limit=1 << 30)).hexdigest()
    except OSError as exc:
        digest = f"unreadable ({exc.strerror})"
    if digest != rec.manifest_sha256:
        findings.append(Finding("release.manifest_changed", str(release / MANIFEST), f"manifest sha256 {digest}, "
                                f"release.json records {rec.manifest_sha256}"))
    for name, want in sorted(rec.rendered.items()):
        try:
            got = hashlib.sha256(read_nofollow(release / name, limit=1 << 30)).hexdigest()
        except OSError as exc:
            got = "a symbolic link" if (release / name).is_symlink() else f"unreadable ({exc.strerror})"
        if got != want:
            findings.append(Finding("release.rendered_changed", str(release / name), f"sha256 {got}, rendered "
                                    f"as {want}"))
    if rec.host not in (LOOPBACK, "localhost", "::1") or not 1024 <= rec.port <= 65535:
        findings.append(Finding("release.record_changed", str(release / RELEASE_JSON),
                                f"binds {rec.host}:{rec.port}, which install never records"))
    if findings:
        raise CheckFailed(f"release {rec.version} was changed on disk since it was installed: not switching to it",
                          code="rollback.drift", findings=findings,
                          hint=f"reinstall release {rec.version} from its bundle (gptossctl install BUNDLE --repair), "
                               "or roll back to another release; 'gptossctl compliance check' shows the same drift")


def _activate_target(act: Activation, rec: ReleaseRecord, cur: int | None) -> None:
    """The target release in service: replica by replica when both have the same shape, else its whole set at
    once (a legacy target comes back as its one vLLM on the port, the router and replicas removed)."""
    layout, systemd = act.layout, act.systemd
    target = layout.release(rec.version)
    cur_rec = read_release(layout.release(cur)) if cur is not None else None
    if cur_rec is not None and can_roll(layout, systemd, cur_rec, rec):
        roll(act, target, layout.release(cur_rec.version))
    else:
        bring_up(act, target)


@dataclass(frozen=True)
class Uninstalled:
    instance: str
    removed: list[str]
    kept: list[str]
    purged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "removed": self.removed, "kept": self.kept, "purged": self.purged}


def uninstall(root: Path, instance: str, *, purge: bool = False) -> Uninstalled:
    """Stop, disable and remove the instance. Keeps the API key, state, caches and audit log unless
    purge; a purge of the last instance also removes the service user. The audit log is never removed:
    it records the uninstall too."""
    command = ["uninstall", f"--instance={instance}"] + (["--purge"] if purge else [])
    try:
        checked = audit.require_intact(root)  # no change its entry could not record
        out = _uninstall(root, instance, purge=purge)
    except GptossctlError as exc:
        audit.record(root, command, f"failed: {exc.code}", instance=instance, detail=exc.message, failure=exc)
        raise
    audit.record(root, command, "ok", instance=instance, checked=checked,
                 detail=f"removed {len(out.removed)} paths, kept {len(out.kept)}")
    return out


def _uninstall(root: Path, instance: str, *, purge: bool) -> Uninstalled:
    layout = Layout(root, check_instance(instance))
    systemd = _systemd(layout)
    if not layout.opt.exists() and not installed_units(layout):
        raise CheckFailed(f"instance {instance} is not installed under {root}", code="uninstall.not_installed",
                          hint="see 'gptossctl status' for the installed instances")
    removed: list[str] = []
    kept: list[str] = []
    with install_lock(layout):
        removed += _remove_unit(layout, systemd)
        removed += remove_compliance_timer(layout, systemd, last=Layout(root).instances() == [layout.instance])
        shutil.rmtree(layout.opt, ignore_errors=True)
        removed.append(str(layout.opt))
        if purge:
            for report in sorted(layout.compliance_dir.glob(f"{layout.instance}.*")):
                report.unlink()
                removed.append(str(report))
        replicas = [layout.replica(k) for k in _replica_dirs(layout)]
        for p in (layout.etc, layout.state, layout.cache, *(d for r in replicas for d in (r.state, r.cache))):
            if p.exists():
                if purge:
                    shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p)) if purge else kept.append(str(p))
        if purge and not Layout(root).instances():
            removed += _purge_last(layout, systemd)
    return Uninstalled(instance, removed, kept, purge)


def _remove_unit(layout: Layout, systemd: Systemd) -> list[str]:
    """Every unit of the instance: its one vLLM, or its replicas and router."""
    return [str(layout.unit_dir / name) for name in retire(layout, systemd, ())]


def _replica_dirs(layout: Layout) -> list[int]:
    """Replica indices whose state or cache directory is on disk (gptoss/<instance>-r<k>)."""
    prefix = f"{layout.instance}-r"
    found = set()
    for parent in (layout.state.parent, layout.cache.parent):
        if parent.is_dir():
            found |= {int(p.name[len(prefix):]) for p in parent.iterdir()
                      if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()}
    return sorted(found)


def _purge_last(layout: Layout, systemd: Systemd) -> list[str]:
    """The last instance purged: the service user, the uv cache and the empty trees go too."""
    removed = []
    for p in (layout.sysusers, layout.uv_cache, layout.base, layout.etc.parent, layout.state.parent,
              layout.cache.parent, layout.compliance_dir):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(str(p))
    if systemd.live and delete_user(SERVICE_USER):
        removed.append(f"user {SERVICE_USER}")
    return removed
