"""The audit log: one JSON line per command that changed the system, hash-chained.

Each entry carries `prev` (the previous entry's hash) and `hash` (SHA-256 of the entry's canonical JSON
without `hash`), so editing or deleting an entry breaks the chain at that point. A separate head file
records the last sequence number and hash, so cutting entries off the end is caught too. (Someone who
can rewrite both files as root can forge a new chain: ship the log to a remote collector for that.)
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed, Finding

GENESIS = "0" * 64
LOG = "audit.jsonl"
HEAD = "audit.head"


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (via sudo from {sudo})" if sudo and sudo != name else name


def append(log_dir: Path, *, command: list[str], result: str, instance: str | None = None,
           bundle_digest: str | None = None, detail: str | None = None) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(log_dir, 0o750)
    path = log_dir / LOG
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.seek(0)
        last = None
        for line in f:
            if line.strip():
                last = line
        prev = json.loads(last) if last else None
        entry: dict[str, Any] = {
            "seq": (prev["seq"] + 1) if prev else 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "user": _user(), "command": command, "instance": instance, "bundle_sha256": bundle_digest,
            "result": result, "detail": detail, "prev": prev["hash"] if prev else GENESIS,
        }
        entry["hash"] = _digest(entry)
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
        head = log_dir / HEAD
        tmp = log_dir / f".{HEAD}.tmp"
        tmp.write_text(f"{entry['seq']} {entry['hash']}\n")
        os.chmod(tmp, 0o640)
        os.replace(tmp, head)
    return entry


@dataclass(frozen=True)
class AuditReport:
    path: Path
    entries: int
    head: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "entries": self.entries, "head": self.head, "intact": True}


def verify(log_dir: Path) -> AuditReport:
    """Walk the chain; CheckFailed naming the first broken entry (line number) and why."""
    path = log_dir / LOG
    if not path.exists():
        return AuditReport(path, 0, None)
    findings: list[Finding] = []
    prev_hash, seq, count = GENESIS, 0, 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            entry = json.loads(line)
        except ValueError:
            findings.append(Finding("audit.unreadable", where, "not a JSON line"))
            break
        if entry.get("hash") != _digest(entry):
            findings.append(Finding("audit.entry_modified", where, f"entry {entry.get('seq')} does not match its hash"))
        if entry.get("prev") != prev_hash or entry.get("seq") != seq + 1:
            findings.append(Finding("audit.chain_broken", where, f"entry {entry.get('seq')} does not follow entry "
                                    f"{seq}: an entry before it was deleted, inserted or edited"))
        prev_hash, seq, count = entry.get("hash", ""), int(entry.get("seq", seq + 1)), count + 1
        if findings:
            break
    head = log_dir / HEAD
    if not findings and head.exists():
        want_seq, _, want_hash = head.read_text().strip().partition(" ")
        if (str(seq), prev_hash) != (want_seq, want_hash):
            findings.append(Finding("audit.truncated", str(path), f"the log ends at entry {seq}, the head file "
                                    f"records entry {want_seq}: entries were cut from the end"))
    if findings:
        raise CheckFailed("the audit log was tampered with", code="audit.tampered", findings=findings,
                          hint="keep this copy as evidence; compare with the copy your log collector holds")
    return AuditReport(path, count, prev_hash)
