"""Who can reach it and who can read its secrets: the API key set and enforced (probed live), secret files
0600 root, nothing installed writable by others or by the service user."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gptossctl.adapters.openai_http import key_enforced
from gptossctl.compliance.evidence import Evidence, cap, parse_env, read_text
from gptossctl.compliance.result import CheckResult
from gptossctl.errors import UsageError
from gptossctl.fsutil import acl_write_grants
from gptossctl.install.activate import KERNEL_CACHES
from gptossctl.install.layout import SERVICE_USER
from gptossctl.install.router import router_key_map


def _probe(url: str, key: str, who: str) -> tuple[list[str], list[str]]:
    answer = key_enforced(url, key)
    if isinstance(answer, str):
        return [f"live probe of {who} {url}/v1/models failed: {answer}"], []
    line = f"live probe of {who}: GET /v1/models without a key {answer[0]}, with the key {answer[1]}"
    return ([line], []) if answer != (401, 200) else ([], [line])


def check_api_key(ev: Evidence) -> CheckResult:
    """Every member's VLLM_API_KEY and the router's credential are the instance's key; live, the key is
    enforced at the endpoint and at every running member."""
    ss = ev.serving
    locs = [ev.live(ev.layout.api_key), *([ev.live(ev.layout.router_key)] if ss.router else []),
            *(ev.live(ev.release / n) for n in ev.member_envs)]
    if ev.api_key is None:
        return CheckResult("access.api_key", "fail", (f"{ev.live(ev.layout.api_key)} is missing or unreadable",),
                           tuple(locs))
    bad = [f"VLLM_API_KEY in {n} is absent or not the instance's key" for n, text in ev.member_envs.items()
           if parse_env(text or "").get("VLLM_API_KEY") != ev.api_key]
    bad += [f"the key has {len(ev.api_key)} characters, fewer than 32"] if len(ev.api_key) < 32 else []
    if ss.router is not None:
        try:
            want: str | None = router_key_map(ev.api_key)
        except UsageError as exc:
            want = None
            bad.append(exc.message)
        if want is not None and read_text(ev.layout.router_key) != want:
            bad.append(f"{ev.live(ev.layout.router_key)} (the router's credential) is missing or not the instance's "
                       "key")
    good = ["every replica's VLLM_API_KEY" + (" and the router's credential are" if ss.router else " is")
            + " the instance's key (value not shown)"]
    if ev.systemd.live and ev.active:
        b, g = _probe(ev.endpoint, ev.api_key, "the router" if ss.router else ss.front)
        bad, good = bad + b, good + g
        for m in ss.members:
            if m.port != ev.rec.port and ev.systemd.active_state(m.unit) == "active":
                b, g = _probe(m.endpoint, ev.api_key, f"replica {m.tag[1:]}")
                bad, good = bad + b, good + g
    elif not bad:
        good.append("not running: not probed live")
    return CheckResult("access.api_key", "fail" if bad else "pass", cap(bad or good), tuple(dict.fromkeys(locs)))


def _owner_uid(ev: Evidence) -> int:
    """Root on a live host; in a staged tree, whoever owns the tree (a test or packaging user)."""
    return 0 if not ev.layout.staged else ev.layout.root.stat().st_uid


def check_secrets(ev: Evidence) -> CheckResult:
    uid = _owner_uid(ev)
    wanted = [(ev.layout.api_key, 0o600), *([(ev.layout.router_key, 0o600)] if ev.serving.router else []),
              *((ev.release / n, 0o600) for n in ev.member_envs), (ev.layout.etc, 0o700)]
    bad, evidence = [], []
    for p, mode in wanted:
        try:
            st = p.lstat()
        except OSError:
            bad.append(f"{ev.live(p)} is missing")
            continue
        have = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            bad.append(f"{ev.live(p)} is a symbolic link")
        elif have != mode or st.st_uid != uid:
            bad.append(f"{ev.live(p)} is {have:04o} owned by uid {st.st_uid}; required {mode:04o} owned by uid {uid}")
        else:
            evidence.append(f"{ev.live(p)} {have:04o} uid {uid}")
    locs = tuple(ev.live(p) for p, _m in wanted)
    if bad:
        return CheckResult("access.secrets", "fail", cap(bad), locs)
    return CheckResult("access.secrets", "pass", tuple(evidence), locs)


def _service_uid(ev: Evidence) -> int | None:
    for line in (read_text(ev.layout.root / "etc" / "passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[0] == SERVICE_USER:
            return int(parts[2])
    return None


CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth")
_RELEASE_LINK = re.compile(r"releases/\d+")


@dataclass
class _Walk:
    """The permission invariant, path by path: what is wrong with each offending path, how many were seen."""

    ev: Evidence
    owner: int
    service_uid: int | None
    bad: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    climbed: set[Path] = field(default_factory=set)

    def flag(self, p: Path, why: str) -> None:
        self.bad.setdefault(self.ev.live(p), why)

    def strict(self, p: Path, st: os.stat_result) -> None:
        """Owned by root (the tree's owner when staged), no group or other write, no setuid or setgid."""
        self.seen.add(str(p))
        mode, wrong = stat.S_IMODE(st.st_mode), []
        if st.st_uid != self.owner:
            wrong.append(f"not owned by uid {self.owner}")
        wrong += [w for bit, w in ((0o020, "group-writable"), (0o002, "world-writable"), (stat.S_ISUID, "setuid"),
                                   (stat.S_ISGID, "setgid")) if mode & bit]
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            wrong.append("not a regular file or directory")
        wrong += acl_write_grants(p)
        if wrong:
            self.flag(p, f"{self.ev.live(p)} is {mode:04o} owned by uid {st.st_uid}: {', '.join(wrong)}")

    def path(self, p: Path) -> None:
        """One installed path: a symbolic link only where gptossctl makes one."""
        try:
            st = p.lstat()
        except OSError:
            return
        if not stat.S_ISLNK(st.st_mode):
            self.strict(p, st)
            return
        self.seen.add(str(p))
        target = os.readlink(p)
        if not self._ours(p, target):
            self.flag(p, f"{self.ev.live(p)} is a symbolic link (to {target}) that gptossctl did not make")
        elif st.st_uid != self.owner:
            self.flag(p, f"{self.ev.live(p)} is a symbolic link owned by uid {st.st_uid}: not owned by uid "
                         f"{self.owner}")

    def _ours(self, p: Path, target: str) -> bool:
        """`current -> releases/N`, and the links uv makes in a release's environment (drift.environment
        holds each one to its recorded target)."""
        layout = self.ev.layout
        if p == layout.current:
            return bool(_RELEASE_LINK.fullmatch(target))
        rel = p.relative_to(layout.releases).parts if p.is_relative_to(layout.releases) else ()
        return len(rel) > 2 and rel[1] == "venv"

    def tree(self, top: Path) -> None:
        self.path(top)
        if top.is_symlink() or not top.is_dir():
            return
        for d, dirs, files in os.walk(top):
            for name in dirs + files:
                self.path(Path(d) / name)

    def parents(self, p: Path) -> None:
        """Every directory above p up to / (up to the staging root when staged), as the kernel follows it."""
        root = self.ev.layout.root
        for parent in p.parents:
            if not parent.is_relative_to(root) or parent in self.climbed:
                break  # outside the staging root, or already checked with everything above it
            self.climbed.add(parent)
            try:
                st, lst = parent.stat(), parent.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(lst.st_mode) and lst.st_uid != self.owner:
                self.flag(parent, f"{self.ev.live(parent)} is a symbolic link owned by uid {lst.st_uid}: not owned "
                                  f"by uid {self.owner}")
            self.strict(parent, st)
            if parent == root:
                break

    def service_dir(self, top: Path, kernels: tuple[tuple[str, ...], ...]) -> None:
        """The service's own state or cache directory: the service user may own it, but nobody else may write
        it, and it holds nothing to execute: no file with an x bit and no Python or shared object (.py, .pyc, .so,
        .pth), but in its kernel caches. Links are not followed."""
        if not top.is_dir() or top.is_symlink():
            return
        allowed = {self.owner} | ({self.service_uid} if self.service_uid is not None else set())
        paths = [top] + [Path(d) / n for d, dirs, files in os.walk(top) for n in dirs + files]
        for p in paths:
            try:
                st = p.lstat()
            except OSError:  # the running service removed it meanwhile
                continue
            self.seen.add(str(p))
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            wrong = [] if st.st_uid in allowed else [f"owned by neither uid {self.owner} nor {SERVICE_USER}"]
            wrong += [w for bit, w in ((0o022, "group- or world-writable"), (stat.S_ISUID, "setuid"),
                                       (stat.S_ISGID, "setgid")) if mode & bit]
            wrong += acl_write_grants(p, frozenset(allowed | {0}))
            if stat.S_ISREG(st.st_mode) and not any(p.relative_to(top).parts[:len(k)] == k for k in kernels):
                wrong += ["executable"] if mode & 0o111 else []
                wrong += ["code the service could run"] if p.suffix in CODE_SUFFIXES else []
            if wrong:
                self.flag(p, f"{self.ev.live(p)} is {mode:04o} owned by uid {st.st_uid}: {', '.join(wrong)}")


def permission_set(ev: Evidence) -> tuple[list[Path], list[Path], list[tuple[Path, tuple[tuple[str, ...], ...]]]]:
    """(trees walked whole, single paths, the service's own directories with their kernel caches): everything
    whose permissions the instance's integrity rests on."""
    layout = ev.layout
    trees = [layout.opt, layout.etc, layout.audit_anchor.parent, layout.log_dir]
    singles = [layout.base, layout.lock, layout.sysusers, layout.api_key, layout.router_key]
    for v in ev.units:
        singles += [v.unit.path, *v.dropins, *([v.fragment] if v.fragment is not None else [])]
    shapes = [m.shape for m in ev.serving.members]
    own = [(d, KERNEL_CACHES[kind]) for s in shapes for d, kind in ((s.state, "state"), (s.cache, "cache"))]
    return trees, list(dict.fromkeys(singles)), own


def check_permissions(ev: Evidence) -> CheckResult:
    """Every installed path and every directory above it: owned by root, not group- or world-writable, no
    setuid or setgid, no link gptossctl did not make; the service's state and cache hold nothing to run."""
    walk = _Walk(ev, _owner_uid(ev), _service_uid(ev))
    trees, singles, own = permission_set(ev)
    for t in trees:
        walk.tree(t)
    for p in singles:
        walk.path(p)
    for d, kernels in own:
        walk.service_dir(d, kernels)
    # Every directory above, but the audit log's: /var/log is root:syslog 0775 on Ubuntu, and the log is held to
    # its anchor in /var/lib/gptossctl, whose parents are checked.
    for p in [*(t for t in trees if t != ev.layout.log_dir), *singles, *(d for d, _k in own)]:
        if p.exists() or p.is_symlink():
            walk.parents(p)
    if walk.bad:
        return CheckResult("access.permissions", "fail", cap([walk.bad[k] for k in sorted(walk.bad)]),
                           tuple(sorted(walk.bad))[:12])
    top = "/" if not ev.layout.staged else f"the staging root {ev.layout.root}"
    present = [ev.live(d) for d, _k in own if d.is_dir()]
    return CheckResult("access.permissions", "pass", (
        f"{len(walk.seen)} paths under {', '.join(ev.live(t) for t in trees)}, the units and their drop-ins, the "
        f"credentials, and every directory above them (but the audit log's) up to {top}: owned by uid "
        f"{walk.owner}, none group- or world-writable (mode bits or POSIX ACL), no setuid or setgid, no link "
        "gptossctl did not make",
        f"the service's own directories ({', '.join(present) or 'none yet'}): written only by root or "
        f"{SERVICE_USER}, no executable, no .py/.pyc/.so/.pth outside the kernel caches "
        f"({', '.join(f'{k}/' + '/'.join(p) for k, ps in KERNEL_CACHES.items() for p in ps)})"))
