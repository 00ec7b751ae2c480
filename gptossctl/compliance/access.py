"""Who can reach it and who can read its secrets: the API key set and enforced (probed live), secret files
0600 root, nothing installed writable by others or by the service user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gptossctl.adapters.openai_http import key_enforced
from gptossctl.compliance import replicas
from gptossctl.compliance.evidence import Evidence, cap, read_text
from gptossctl.compliance.result import CheckResult
from gptossctl.install.layout import SERVICE_USER
from gptossctl.install.release import ENV_FILE


def check_api_key(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_api_key(ev)
    locs = (ev.live(ev.release / ENV_FILE), ev.live(ev.layout.api_key))
    env = ev.env or {}
    bad = []
    if ev.api_key is None:
        bad.append(f"{ev.live(ev.layout.api_key)} is missing or unreadable")
    elif env.get("VLLM_API_KEY") != ev.api_key:
        bad.append("VLLM_API_KEY in service.env is absent or not the instance's key")
    elif len(ev.api_key) < 32:
        bad.append(f"the key has {len(ev.api_key)} characters, fewer than 32")
    evidence = ["VLLM_API_KEY is the instance's key (value not shown)"] if not bad else []
    if ev.systemd.live and ev.active and ev.api_key:
        answer = key_enforced(ev.endpoint, ev.api_key)
        if isinstance(answer, str):
            bad.append(f"live probe of {ev.endpoint}/v1/models failed: {answer}")
        else:
            probe = f"live probe: GET /v1/models without a key {answer[0]}, with the key {answer[1]}"
            (bad if answer != (401, 200) else evidence).append(probe)
    elif not bad:
        evidence.append("service not running: not probed live")
    if bad:
        return CheckResult("access.api_key", "fail", cap(bad), locs)
    return CheckResult("access.api_key", "pass", tuple(evidence), locs)


def _owner_uid(ev: Evidence) -> int:
    """Root on a live host; in a staged tree, whoever owns the tree (a test or packaging user)."""
    return 0 if not ev.layout.staged else ev.layout.root.stat().st_uid


def check_secrets(ev: Evidence) -> CheckResult:
    uid = _owner_uid(ev)
    wanted = replicas.secret_files(ev) if ev.rec.replicated else \
        [(ev.layout.api_key, 0o600), (ev.release / ENV_FILE, 0o600), (ev.layout.etc, 0o700)]
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


def check_permissions(ev: Evidence) -> CheckResult:
    service_uid = _service_uid(ev)
    trees = [ev.layout.opt, ev.layout.etc, ev.layout.log_dir]
    singles = [ev.layout.unit_path, ev.layout.base, ev.layout.unit_dir / "gptoss-compliance@.service",
               ev.layout.unit_dir / "gptoss-compliance@.timer"]
    singles += [path for _name, path, _copy in replicas.units(ev)] if ev.rec.replicated else []
    bad: list[str] = []
    seen = 0

    def look(p: str, st: os.stat_result) -> None:
        nonlocal seen
        seen += 1
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_mode & 0o002:
            bad.append(f"{ev.live(Path(p))} is world-writable ({stat.S_IMODE(st.st_mode):04o})")
        elif service_uid is not None and st.st_uid == service_uid:
            bad.append(f"{ev.live(Path(p))} is owned by the service user {SERVICE_USER}")

    for tree in trees:
        if not tree.exists():
            continue
        look(str(tree), tree.lstat())
        for d, dirs, files in os.walk(tree):
            for name in dirs + files:
                p = os.path.join(d, name)
                look(p, os.lstat(p))
    for single in singles:
        if single.exists() or single.is_symlink():
            look(str(single), single.lstat())
    if bad:
        return CheckResult("access.permissions", "fail", cap(bad), tuple(sorted({b.split(" ")[0] for b in bad}))[:12])
    return CheckResult("access.permissions", "pass", (f"{seen} paths under {ev.live(ev.layout.opt)}, "
                                                      f"{ev.live(ev.layout.etc)}, {ev.live(ev.layout.log_dir)} "
                                                      "and the units: none world-writable or owned by "
                                                      f"{SERVICE_USER}",))
