"""The releases of an instance on disk: `releases list` (history, in the spirit of `helm history`) and
`releases prune --keep N` (room for the next release without losing the way back).

Every fact a verdict rests on comes from the verified audit chain, never from a file on the host alone:
  (1) survey opt/gptoss/<instance>/releases/: a directory named by a number is a release; `.N.partial` and
      `.N.pruning` are gptossctl's own leftovers of an interrupted unpack or prune; `.N.replaced` is the drifted
      copy `install --repair` set aside: tampering evidence, listed as such and never pruned; any other name
      is foreign (someone's backup, a mount point) and is never touched.
  (2) match each release's record (release.json) against the seals that installs and rollbacks attached to
      the chain (install/seal.py): a record whose digest the chain sealed is audited, and the entry that
      sealed it says when it was installed and by whom. A record the chain does not know (edited, copied,
      forged) is "unaudited": it is never chosen as current or rollback target, and prune never removes it
      (it is evidence). A release whose install failed after unpacking is "failed" when the chain holds that
      failure for the record's signed manifest digest.
  (3) current is what `current` points at, when that release is audited; the rollback target is the newest
      audited release below it (what `gptossctl rollback` goes back to).
  (4) prune, under the host's install lock: keep the current release and the rollback target whatever N is,
      then the newest others up to N in all; remove the rest, oldest first, each renamed to `.N.pruning` first
      (a crash never leaves half a release under its own name) and then deleted, the bytes freed measured
      from the tree (not from a record), one audit entry per release removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, UsageError
from gptossctl.install import audit
from gptossctl.install.layout import Layout, check_instance, install_lock
from gptossctl.install.release import RELEASE_JSON, current_version, read_release
from gptossctl.install.seal import SEAL_SCHEMA, digest, last_sealed
from gptossctl.install.trust import current_trust

PRUNE_SCHEMA = "gptossctl.release-prune/1"
MAX_KEEP = 1000
_MANIFEST = "manifest.json"
_RELEASE = re.compile(r"[0-9]{1,15}")
_LEFTOVER = re.compile(r"\.([0-9]{1,15})\.(partial|pruning)")
_EVIDENCE = re.compile(r"\.([0-9]{1,15})\.replaced")

CURRENT, ROLLBACK, RETIRED, FAILED = "current", "rollback target", "retired", "failed"
UNAUDITED, LEFTOVER, EVIDENCE, FOREIGN = "unaudited", "leftover", "evidence", "foreign"
_RELEASE_STATES = (CURRENT, ROLLBACK, RETIRED, FAILED)


@dataclass(frozen=True)
class Usage:
    """A tree's size on disk (allocated blocks, each inode once) and what deleting it would give back (the same,
    less files hard-linked from outside the tree, such as uv's cache)."""

    bytes: int
    freeable: int


def measure(path: Path) -> Usage:
    """Walk the tree without following links: st_blocks of every inode once, as `du -s -B1` counts."""
    seen: dict[tuple[int, int], list[int]] = {}  # inode -> [blocks bytes, links seen, st_nlink, is_dir]
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            st = p.lstat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            seen[key][1] += 1
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        seen[key] = [st.st_blocks * 512, 1, st.st_nlink, int(is_dir)]
        if is_dir:
            try:
                stack.extend(p.iterdir())
            except OSError:
                pass
    total = sum(v[0] for v in seen.values())
    freeable = sum(v[0] for v in seen.values() if v[3] or v[1] >= v[2])
    return Usage(total, freeable)


@dataclass(frozen=True)
class Signer:
    name: str | None  # from the trust root; None for a key it does not name
    keyid: str

    def __str__(self) -> str:
        return self.name or self.keyid[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "keyid": self.keyid}


@dataclass(frozen=True)
class ReleaseEntry:
    """One entry of releases/: a release and its state, or a leftover or foreign entry (version None for one
    that is not named by a number)."""

    name: str
    state: str
    version: int | None
    usage: Usage
    bundle_sha256: str | None = None  # the signed manifest's digest, from the record
    signers: tuple[Signer, ...] = ()  # only from a record the chain sealed
    installed_at: str | None = None  # the audit entry's time
    installed_by: str | None = None  # the audit entry's actor
    audit_seq: int | None = None
    note: str = ""

    @property
    def release(self) -> bool:
        return self.state in _RELEASE_STATES

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "state": self.state, "bundle_sha256": self.bundle_sha256,
                "signers": [x.to_dict() for x in self.signers], "installed_at": self.installed_at,
                "installed_by": self.installed_by,
                "audit_seq": self.audit_seq, "bytes": self.usage.bytes, "freeable_bytes": self.usage.freeable,
                "note": self.note}


@dataclass(frozen=True)
class ReleaseHistory:
    instance: str
    path: Path
    entries: tuple[ReleaseEntry, ...]  # releases newest first, then leftovers, evidence, foreign entries
    current: int | None
    rollback_target: int | None
    findings: tuple[Finding, ...] = ()
    protected: frozenset[int] = frozenset()  # never removed by prune: current, rollback target, the sealed current

    @property
    def ok(self) -> bool:
        """Nothing the chain does not vouch for: no unaudited record, an intact chain."""
        return not any(f.code in ("releases.unaudited", "releases.current_unaudited") or f.code.startswith("audit.")
                       for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "path": str(self.path), "current": self.current,
                "rollback_target": self.rollback_target, "releases": [e.to_dict() for e in self.entries],
                "bytes": sum(e.usage.bytes for e in self.entries if e.state != FOREIGN), "ok": self.ok}


# ---------------------------------------------------------------- (1)-(3) the history


def _sealed_by(records: Sequence[Mapping[str, Any]], instance: str) -> dict[int, list[Mapping[str, Any]]]:
    """version -> the entries (install or rollback that succeeded) whose seal names that release, oldest first."""
    out: dict[int, list[Mapping[str, Any]]] = {}
    for e in records:
        s, cmd, result = e.get("seal"), e.get("command"), e.get("result")
        if isinstance(s, dict) and s.get("schema") == SEAL_SCHEMA and s.get("instance") == instance \
                and type(s.get("version")) is int and isinstance(cmd, list) and cmd and cmd[0] in ("install", "rollback") \
                and result in ("ok", "unchanged"):
            out.setdefault(int(s["version"]), []).append(e)
    return out


def _failed_install(records: Sequence[Mapping[str, Any]], instance: str, manifest_sha256: str) -> Mapping[str, Any] | None:
    """The newest install of this signed manifest that the chain records as failed or interrupted."""
    for e in reversed(records):
        cmd, result = e.get("command"), e.get("result")
        if isinstance(cmd, list) and cmd and cmd[0] == "install" and e.get("instance") == instance \
                and e.get("bundle_sha256") == manifest_sha256 and isinstance(result, str) \
                and (result.startswith("failed") or result == "interrupted"):
            found: Mapping[str, Any] = e
            return found
    return None


def _manifest_digest(release: Path) -> str | None:
    try:
        if (release / _MANIFEST).is_symlink():
            return None
        return hashlib.sha256((release / _MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def _signers(layout: Layout, keyids: Sequence[str]) -> tuple[Signer, ...]:
    """The record's key ids, named by the instance's trust root where it knows them."""
    try:
        root, _note = current_trust(layout)
    except GptossctlError:
        root = None
    return tuple(Signer(root.name_of(k) if root is not None else None, k) for k in keyids)


def _classify(layout: Layout, name: str, path: Path, records: Sequence[Mapping[str, Any]],
              sealed: Mapping[int, list[Mapping[str, Any]]]) -> ReleaseEntry:
    """(2) What one entry of releases/ is, judged by the chain."""
    usage = measure(path)
    if path.is_symlink() or not path.is_dir() or not (_RELEASE.fullmatch(name) or _LEFTOVER.fullmatch(name)
                                                        or _EVIDENCE.fullmatch(name)):
        return ReleaseEntry(name, FOREIGN, None, usage, note="not a gptossctl release: never touched")
    if ev := _EVIDENCE.fullmatch(name):
        return ReleaseEntry(name, EVIDENCE, int(ev.group(1)), usage,
                            note=f"the drifted copy of release {ev.group(1)} that 'install --repair' set aside: "
                                 "evidence, never pruned (remove it by hand once investigated)")
    m = _LEFTOVER.fullmatch(name)
    if m:
        return ReleaseEntry(name, LEFTOVER, int(m.group(1)), usage,
                            note=f"left by an interrupted {'prune' if m.group(2) == 'pruning' else 'install'}: "
                                 "never served, removed by prune")
    version = int(name)
    rec = read_release(path)
    if rec is None:
        return ReleaseEntry(name, UNAUDITED, version, usage, note="no readable release record")
    on_disk = digest(path / RELEASE_JSON)
    seals = sealed.get(version, [])
    match = [e for e in seals if isinstance(e.get("seal"), dict) and e["seal"].get("release_json") == on_disk]
    if rec.version != version or rec.instance != layout.instance:
        return ReleaseEntry(name, UNAUDITED, version, usage, bundle_sha256=rec.manifest_sha256,
                            note=f"the record says release {rec.version} of {rec.instance!r}: it was edited or copied")
    if match:
        first = next((e for e in match if e["command"][0] == "install"), match[0])
        return ReleaseEntry(name, RETIRED, version, usage, bundle_sha256=rec.manifest_sha256,
                            signers=_signers(layout, rec.signers),
                            installed_at=str(first.get("time")), installed_by=str(first.get("user")),
                            audit_seq=int(first["seq"]))
    if seals:
        return ReleaseEntry(name, UNAUDITED, version, usage, bundle_sha256=rec.manifest_sha256,
                            note=f"release.json is not what the audit chain sealed (entry {seals[-1].get('seq')}): "
                                 "it was changed outside gptossctl")
    failed = _failed_install(records, layout.instance, rec.manifest_sha256)
    if failed is not None and _manifest_digest(path) == rec.manifest_sha256:
        return ReleaseEntry(name, FAILED, version, usage, bundle_sha256=rec.manifest_sha256,
                            installed_at=str(failed.get("time")),
                            installed_by=str(failed.get("user")), audit_seq=int(failed["seq"]),
                            note=f"its install {failed.get('result')}: never served")
    return ReleaseEntry(name, UNAUDITED, version, usage, bundle_sha256=rec.manifest_sha256,
                        note="the audit chain holds no install of this record")


def _with_state(e: ReleaseEntry, state: str) -> ReleaseEntry:
    return ReleaseEntry(e.name, state, e.version, e.usage, e.bundle_sha256, e.signers, e.installed_at,
                        e.installed_by, e.audit_seq, e.note)


def history(root: Path, instance: str, *, records: Sequence[Mapping[str, Any]] | None = None) -> ReleaseHistory:
    """(1)-(3) Every entry of the instance's releases/ and its state. `records`: the verified chain's entries
    (read here when not given); a broken chain vouches for nothing, so every record reads as unaudited."""
    layout = Layout(root, check_instance(instance))
    findings: list[Finding] = []
    if records is None:
        chain = audit.inspect_root(root)
        if chain.findings:
            findings += [Finding(f.code, f.subject, f.message, hint=audit.RESET_HINT) for f in chain.findings]
            records = ()
        else:
            records = chain.records
    if not layout.releases.is_dir():
        if not layout.opt.is_dir():
            raise CheckFailed(f"instance {instance} is not installed under {root}", code="releases.not_installed",
                              hint="see 'gptossctl status' for the installed instances")
        names: list[str] = []
    else:
        try:
            names = sorted(p.name for p in layout.releases.iterdir())
        except OSError as exc:
            raise EnvironmentNotReady(f"{layout.releases} cannot be read: {exc.strerror}", code="releases.unreadable",
                                      hint="run as root") from None
    sealed = _sealed_by(records, layout.instance)
    entries = [_classify(layout, n, layout.releases / n, records, sealed) for n in names]
    audited = {e.version for e in entries if e.state == RETIRED}
    link = current_version(layout)
    current = link if link in audited else None
    older = [v for v in audited if v is not None and (current is None or v < current)]
    target = max(older) if current is not None and older else None
    entries = [_with_state(e, CURRENT) if e.release and e.version == current else
               _with_state(e, ROLLBACK) if e.release and e.version == target else e for e in entries]
    sealed_current = last_sealed(records, layout.instance)
    if link is not None and current is None:
        findings.append(Finding("releases.current_unaudited", str(layout.current),
                                f"current points at release {link}, which the audit chain does not vouch for",
                                hint="compare with your log collector's copy; reinstall a release from its signed "
                                     "bundle, or 'gptossctl rollback --to N' to an audited one"))
    elif sealed_current is not None and link != sealed_current:
        findings.append(Finding("releases.current_moved", str(layout.current),
                                f"current points at release {link}, but the newest install or rollback in the audit "
                                f"chain made release {sealed_current} current: it was moved outside gptossctl",
                                hint=f"gptossctl rollback --to {sealed_current}, or investigate who moved it"))
    for e in entries:
        where = str(layout.live_path(layout.releases / e.name))
        if e.state == UNAUDITED:
            findings.append(Finding("releases.unaudited", where, e.note, hint=(
                "keep it as evidence and compare it with the audit chain ('gptossctl compliance check'); reinstall "
                "the release from its signed bundle with --repair, or remove it by hand once investigated (an "
                "install that was interrupted leaves one too: run it again)")))
        elif e.state == FOREIGN:
            findings.append(Finding("releases.foreign", where, e.note,
                                    hint="move it out of the releases folder if it is yours; gptossctl leaves it"))
        elif e.state == EVIDENCE:
            findings.append(Finding("releases.evidence", where, e.note,
                                    hint="compare it with the release ('diff -r') and the audit chain; copy it off "
                                         "the host, then remove it by hand: gptossctl never does"))
    protected = frozenset(v for v in (current, target, link, sealed_current) if v is not None)
    order = {s: i for i, s in enumerate((*_RELEASE_STATES, UNAUDITED, LEFTOVER, EVIDENCE, FOREIGN))}
    others = (LEFTOVER, EVIDENCE, FOREIGN)
    entries.sort(key=lambda e: (e.state in others, order[e.state] if e.state in others else 0, -(e.version or 0),
                                e.name))
    return ReleaseHistory(layout.instance, layout.live_path(layout.releases), tuple(entries), current, target,
                          tuple(sorted(findings)), protected)


# ---------------------------------------------------------------- (4) prune


@dataclass(frozen=True)
class Removal:
    name: str
    version: int | None
    state: str
    bytes_freed: int
    bundle_sha256: str | None
    audit_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "state": self.state, "bytes_freed": self.bytes_freed,
                "bundle_sha256": self.bundle_sha256, "audit_seq": self.audit_seq}


@dataclass(frozen=True)
class PruneResult:
    instance: str
    keep: int
    dry_run: bool
    removed: tuple[Removal, ...]
    kept: tuple[ReleaseEntry, ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes_freed for r in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "keep": self.keep, "dry_run": self.dry_run,
                "removed": [r.to_dict() for r in self.removed], "bytes_freed": self.bytes_freed,
                "kept": [{"name": e.name, "version": e.version, "state": e.state, "bytes": e.usage.bytes}
                         for e in self.kept]}


def check_keep(keep: int) -> int:
    if not 1 <= keep <= MAX_KEEP:
        raise UsageError(f"--keep {keep}: keep at least 1 release (the current one)" if keep < 1 else
                         f"--keep {keep} is more than {MAX_KEEP}", code="releases.bad_keep",
                         hint="give --keep N with N >= 1; prune never removes the current release or the "
                              "rollback target, whatever N is")
    return keep


def choose(h: ReleaseHistory, keep: int) -> tuple[list[ReleaseEntry], list[ReleaseEntry]]:
    """(removed oldest first, kept): the protected releases always, then the newest others up to `keep` in all;
    leftovers always go; unaudited, evidence and foreign entries always stay."""
    releases = sorted((e for e in h.entries if e.release), key=lambda e: -(e.version or 0))
    kept_versions: set[int | None] = {e.version for e in releases if e.version in h.protected}
    for e in releases:
        if len(kept_versions) >= keep:
            break
        kept_versions.add(e.version)
    remove = [e for e in releases if e.version not in kept_versions]
    remove.sort(key=lambda e: e.version or 0)
    remove += [e for e in h.entries if e.state == LEFTOVER]
    kept = [e for e in h.entries if e not in remove and e.state != LEFTOVER]
    return remove, kept


def prune(root: Path, instance: str, *, keep: int, dry_run: bool = False) -> PruneResult:
    """Remove the oldest releases beyond `keep`, never the current one or the rollback target; each removal is
    audited. A refusal is audited too (but for a dry run, which writes nothing)."""
    check_keep(keep)
    layout = Layout(root, check_instance(instance))
    command = ["releases", "prune", f"--instance={layout.instance}", f"--keep={keep}"]
    checked = audit.require_intact(root)  # no change whose entry could not be written (a dry run: its refusal)
    if dry_run:
        h = history(root, layout.instance, records=checked.records)
        _refuse_unvouched(h)
        remove, kept = choose(h, keep)
        return PruneResult(layout.instance, keep, True, tuple(
            Removal(e.name, e.version, e.state, e.usage.freeable, e.bundle_sha256) for e in remove), tuple(kept),
            h.findings)
    removed: list[Removal] = []
    try:
        with install_lock(layout):
            checked = audit.require_intact(root)  # read again under the lock: an install that just finished
            h = history(root, layout.instance, records=checked.records)
            _refuse_unvouched(h)
            remove, kept = choose(h, keep)
            for e in remove:
                removed.append(_remove(layout, e, command, checked))
    except GptossctlError as exc:
        exc.data["removed"] = [r.to_dict() for r in removed]
        audit.record(root, command, f"failed: {exc.code}", instance=layout.instance, detail=exc.message, failure=exc)
        raise
    return PruneResult(layout.instance, keep, False, tuple(removed), tuple(kept), h.findings)


def _refuse_unvouched(h: ReleaseHistory) -> None:
    """Which release serves is what prune must never get wrong: when `current` is not the release the chain says
    is current, nothing is removed (exit 1)."""
    moved = [f for f in h.findings if f.code in ("releases.current_unaudited", "releases.current_moved")]
    if moved:
        raise CheckFailed(f"the audit chain does not vouch for the current release of {h.instance}: nothing pruned",
                          code="releases.current_unaudited", findings=moved,
                          hint=moved[0].hint or "investigate with 'gptossctl compliance check'")


def _remove(layout: Layout, e: ReleaseEntry, command: list[str], checked: audit.AuditReport) -> Removal:
    """Rename to `.N.pruning` (one atomic step: the release is gone from its name), measure, delete, record."""
    src = layout.releases / e.name
    trash = src if e.state == LEFTOVER else layout.releases / f".{e.name}.pruning"
    try:
        if trash != src:
            if trash.exists() or trash.is_symlink():  # an earlier prune's crash: finish that one first
                shutil.rmtree(trash)
            os.rename(src, trash)
        freed = measure(trash).freeable
        shutil.rmtree(trash)
    except OSError as exc:
        raise EnvironmentNotReady(f"cannot remove {layout.live_path(src)}: {exc.strerror}", code="releases.remove_failed",
                                  hint="run as root; what was renamed to .N.pruning is removed by the next prune") \
            from None
    doc = {"schema": PRUNE_SCHEMA, "name": e.name, "version": e.version, "state": e.state, "bytes_freed": freed,
           "bundle_sha256": e.bundle_sha256}
    what = f"release {e.version}" if e.state != LEFTOVER else f"leftover {e.name}"
    entry = audit.record(layout.root, command, "ok", instance=layout.instance, digest=e.bundle_sha256,
                         detail=f"removed {what} ({e.state}), {freed} bytes freed", attach={"prune": doc},
                         checked=checked)
    return Removal(e.name, e.version, e.state, freed, e.bundle_sha256, entry["seq"] if entry else None)


# ---------------------------------------------------------------- install's disk preflight


def prune_advice(layout: Layout, short: int) -> str:
    """What `releases prune` would free toward `short` missing bytes on this instance, computed from the trees as
    prune would choose them: the largest --keep that makes room, or how far --keep 1 gets. Empty when the
    instance has nothing installed."""
    try:
        h = history(layout.root, layout.instance)
    except GptossctlError:
        return ""
    if any(f.code.startswith("audit.") for f in h.findings):
        return "releases prune is refused while the audit chain is broken ('gptossctl audit verify')"
    if any(f.code in ("releases.current_unaudited", "releases.current_moved") for f in h.findings):
        return f"releases prune is refused: the audit chain does not vouch for {h.instance}'s current release"
    count = sum(1 for e in h.entries if e.release)
    if not count:
        return ""
    for keep in range(count, 0, -1):
        freed = sum(e.usage.freeable for e in choose(h, keep)[0])
        if freed >= short:
            return (f"'gptossctl releases prune --instance {h.instance} --keep {keep}' would free {freed} bytes "
                    f"({_human(freed)}), enough for the {_human(short)} missing: run it, then the install again")
    freed = sum(e.usage.freeable for e in choose(h, 1)[0])
    if not freed:
        return (f"no release of {h.instance} can be pruned (the current release and its rollback target are kept): "
                f"free {_human(short)} elsewhere")
    return (f"'gptossctl releases prune --instance {h.instance} --keep 1' would free {freed} bytes ({_human(freed)}) "
            f"of the {_human(short)} missing: run it and free {_human(short - freed)} more elsewhere")


def _human(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

