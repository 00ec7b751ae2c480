"""The audit log: one JSON line per command that changed the system (refusals too), hash-chained.

Each entry carries `prev` (the previous entry's hash) and `hash` (SHA-256 of the entry's canonical JSON
without `hash`), so editing or deleting an entry breaks the chain at that point. Two records of the newest
entry guard the end of the chain: the head file beside the log, and an anchor kept elsewhere
(/var/lib/gptossctl/audit.anchor), so cutting entries off the end, or deleting the log together with its
head, is detected. Lines that are not entries (binary, torn, not JSON objects) are findings, never crashes.

What this does not stop: someone who is root can rewrite the log, the head and the anchor together and
forge a consistent new chain. Ship each line to a remote collector (journald forwarding, syslog) as it is
written: the collector's copy is what such an attacker cannot reach.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pwd
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError
from gptossctl.fsutil import atomic_write
from gptossctl.install.layout import Layout, check_confined

GENESIS = "0" * 64
LOG = "audit.jsonl"
HEAD = "audit.head"
ANCHOR_SCHEMA = "gptossctl.audit-anchor/1"
MAX_LINE = 1 << 20


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


UNSET_LOGINUID = 4294967295  # (uid_t)-1: no login session (a daemon, a container, early boot)


def _user() -> dict[str, Any]:
    """Who ran the command, from what the process cannot be told by its caller: the real uid (and its name)
    and the kernel's login uid (/proc/self/loginuid: the person whose login started this session; su and
    sudo keep it, and without CAP_AUDIT_CONTROL it cannot be changed). Never USER or LOGNAME; SUDO_USER is an
    environment variable anyone can set, so it is kept only as what was claimed."""
    uid = os.getuid()
    name = _name_of(uid)
    login_uid: int | None = None
    try:
        with open("/proc/self/loginuid", encoding="ascii") as f:
            login_uid = int(f.read(16).strip())
    except (OSError, ValueError):
        login_uid = None
    if login_uid == UNSET_LOGINUID:
        login_uid = None
    fields: dict[str, Any] = {"user": name, "uid": uid, "login_uid": login_uid}
    if login_uid is not None and login_uid != uid:
        fields["user"] = f"{name} (login {_name_of(login_uid)})"
    claimed = os.environ.get("SUDO_USER")
    if claimed:
        fields["claimed_sudo_user"] = claimed[:256]
    return fields


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):
        return str(uid)


def _entry(line: bytes) -> dict[str, Any] | None:
    """One log line as an entry, or None when it is not one (any damage)."""
    if len(line) > MAX_LINE:
        return None
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("seq"), int) or not isinstance(doc.get("hash"), str):
        return None
    return doc


def _last(lines: list[bytes]) -> tuple[int, str]:
    """(seq, hash) to chain the next entry from: the last line, even a damaged one (its raw digest), so an
    append never fails and never hides the damage."""
    for raw in reversed(lines):
        if not raw.strip():
            continue
        entry = _entry(raw)
        if entry is not None:
            return int(entry["seq"]), str(entry["hash"])
        return sum(1 for ln in lines if ln.strip()), hashlib.sha256(raw).hexdigest()
    return 0, GENESIS


def append(log_dir: Path, *, command: list[str], result: str, instance: str | None = None,
           bundle_digest: str | None = None, detail: str | None = None, anchor: Path | None = None) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(log_dir, 0o750)
    path = log_dir / LOG
    fd = _open_log(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.seek(0)
        seq, prev = _last(f.read().split(b"\n"))
        # A deleted anchor is evidence: writing a new one on top of a cut log would make the cut invisible.
        keep_anchor = anchor is not None and (seq == 0 or _read_anchor(anchor) is not None)
        entry: dict[str, Any] = {
            "seq": seq + 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            **_user(), "command": command, "instance": instance, "bundle_sha256": bundle_digest,
            "result": result, "detail": detail, "prev": prev,
        }
        entry["hash"] = _digest(entry)
        f.write((json.dumps(entry, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
        head = f"{entry['seq']} {entry['hash']}\n"
        atomic_write(log_dir / HEAD, head, 0o640)
        if anchor is not None and keep_anchor:
            atomic_write(anchor, json.dumps({"schema": ANCHOR_SCHEMA, "seq": entry["seq"], "hash": entry["hash"],
                                             "log": str(path)}) + "\n", 0o640)
    return entry


@dataclass(frozen=True)
class AuditReport:
    path: Path
    entries: int
    head: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "entries": self.entries, "head": self.head, "intact": True}


def _open_log(path: Path, flags: int) -> int:
    """The log (or its head or anchor) as a regular file, never through a link and never blocking: a FIFO or
    a link to /dev/zero put in its place must not hang the command (exit 1: tampering, not a crash)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckFailed(f"{path} is a symbolic link", code="audit.tampered", findings=[Finding(
                "audit.not_a_file", str(path), "a symbolic link stands where the audit file should be")],
                hint="keep it as evidence, then restore the file from your log collector's copy") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckFailed(f"{path} is not a regular file", code="audit.tampered", findings=[Finding(
            "audit.not_a_file", str(path), "a device, FIFO, socket or directory stands where the audit file "
            "should be")], hint="keep it as evidence, then restore the file from your log collector's copy")
    os.set_blocking(fd, True)
    return fd


def _read_small(path: Path) -> bytes | None:
    """The first MAX_LINE bytes of a head or anchor file; None when it is missing, unreadable or not a file."""
    try:
        fd = _open_log(path, os.O_RDONLY)
    except (OSError, CheckFailed):
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read(MAX_LINE)
        except OSError:
            return None


def _read_anchor(anchor: Path | None) -> tuple[int, str] | None:
    """(seq, hash) the anchor records; (-1, "unreadable") for a damaged one; None when there is none (missing,
    a directory, unreadable: once the log has entries, verify calls that a finding)."""
    if anchor is None:
        return None
    raw = _read_small(anchor)
    if raw is None:
        return None
    entry = _entry(raw)
    return (int(entry["seq"]), str(entry["hash"])) if entry else (-1, "unreadable")


def _walk(lines: list[bytes], where: Path) -> tuple[list[Finding], dict[int, str], int, str, int]:
    """Check the chain line by line: findings, seq -> hash of every good entry, last seq and hash, count."""
    findings: list[Finding] = []
    seen: dict[int, str] = {}
    prev_hash, seq, count = GENESIS, 0, 0
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        at = f"{where}:{n}"
        entry = _entry(raw)
        if entry is None:
            findings.append(Finding("audit.unreadable", at, "not an audit entry (damaged, binary or not a JSON "
                                    "object with seq and hash)"))
            prev_hash, seq, count = hashlib.sha256(raw).hexdigest(), seq + 1, count + 1
            continue
        if entry["hash"] != _digest(entry):
            findings.append(Finding("audit.entry_modified", at, f"entry {entry['seq']} does not match its hash"))
        if entry.get("prev") != prev_hash or entry["seq"] != seq + 1:
            findings.append(Finding("audit.chain_broken", at, f"entry {entry['seq']} does not follow entry {seq}: "
                                    "an entry before it was deleted, inserted or edited"))
        seen[entry["seq"]] = entry["hash"]
        prev_hash, seq, count = entry["hash"], entry["seq"], count + 1
    return findings, seen, seq, prev_hash, count


def verify(log_dir: Path, *, anchor: Path | None = None) -> AuditReport:
    """Walk the chain; CheckFailed naming every broken, unreadable or missing part and why."""
    path = log_dir / LOG
    anchored = _read_anchor(anchor)
    if not path.exists():
        if anchored is not None:
            raise CheckFailed("the audit log is gone", code="audit.tampered", findings=[Finding(
                "audit.missing", str(path), f"the log is missing, but the anchor {anchor} records entry {anchored[0]}:"
                " the log was deleted")], hint="restore the log from your log collector's copy and investigate")
        return AuditReport(path, 0, None)
    try:
        with os.fdopen(_open_log(path, os.O_RDONLY), "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise CheckFailed(f"the audit log cannot be read: {exc.strerror}", code="audit.unreadable",
                          hint="run as root; the log is 0640 root") from None
    findings, seen, seq, last_hash, count = _walk(lines, path)
    head = log_dir / HEAD
    head_text = _read_small(head) if head.exists() or head.is_symlink() else None
    if head_text is not None:
        want_seq, _, want_hash = head_text[:200].decode("ascii", "replace").strip().partition(" ")
        if (str(seq), last_hash) != (want_seq, want_hash):
            findings.append(Finding("audit.truncated", str(path), f"the log ends at entry {seq}, the head file records "
                                    f"entry {want_seq}: entries were cut from the end or the head was replaced"))
    elif count:
        findings.append(Finding("audit.head_missing", str(head), "the head file is missing: the end of the log cannot "
                                "be checked against it"))
    if anchor is not None and anchored is None and count:
        findings.append(Finding("audit.anchor_missing", str(anchor), f"the log holds {count} entries but the anchor "
                                "is missing, unreadable or not a file: cutting entries off the end cannot be "
                                "detected, and deleting the anchor is how such a cut is hidden"))
    elif anchored is not None and seen.get(anchored[0]) != anchored[1]:
        findings.append(Finding("audit.truncated", str(path), f"the anchor {anchor} records entry {anchored[0]}, which "
                                "the log no longer holds as written: entries were cut or the log was replaced"))
    if findings:
        raise CheckFailed("the audit log was tampered with", code="audit.tampered", findings=findings,
                          hint="keep this copy as evidence; compare with the copy your log collector holds")
    return AuditReport(path, count, last_hash)


def record(root: Path, command: list[str], result: str, *, instance: str | None, digest: str | None = None,
           detail: str | None = None, failure: GptossctlError | None = None) -> None:
    """Record a change (or a refusal) in the root's audit log and anchor. A log that cannot be written (a
    read-only or foreign --root) must not hide the outcome: a refusal is still reported as it is, with a
    finding that it went unrecorded; a change that went unrecorded is an error of its own."""
    layout = Layout(root)
    try:
        check_confined(root)  # a staged root's log is never written through a link that leads out of it
        append(layout.log_dir, command=command, result=result, instance=instance, bundle_digest=digest,
               detail=detail, anchor=layout.audit_anchor)
    except (OSError, GptossctlError) as exc:
        why = exc.message if isinstance(exc, GptossctlError) else (exc.strerror or str(exc))
        if failure is None:
            raise EnvironmentNotReady(f"the change was made but could not be recorded in {layout.log_dir}: {why}",
                                      code="audit.unwritable", hint="make the log directory writable and check "
                                      "'gptossctl audit verify'") from None
        failure.findings = (*failure.findings, Finding("audit.unrecorded", str(layout.log_dir),
                                                        f"this refusal could not be recorded: {why}"))
