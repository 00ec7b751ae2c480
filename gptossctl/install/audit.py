"""The audit log: one JSON line per command that changed the system (refusals too), hash-chained.

Each entry carries `prev` (the previous entry's hash) and `hash` (SHA-256 of the entry's canonical JSON
without `hash`), so editing or deleting an entry breaks the chain at that point. Two records of the newest
entry guard the end of the chain: the head file beside the log, and an anchor kept elsewhere
(/var/lib/gptossctl/audit.anchor), so cutting entries off the end, or deleting the log together with its
head, is detected; an instance installed with no log at all is too (every install is recorded). Every append
rewrites the anchor, so it must record the newest entry: one appended past it is a finding too. Times only
move forward: an entry dated more than CLOCK_SLACK before its predecessor is backdated, and a clock that far
behind the newest entry is refused (`checked_now`: the lower bound of the clock where expiry is judged). Lines
that are not entries (binary, torn, not JSON objects) are findings, never crashes.

An append verifies the whole chain first and refuses to write on a broken one (audit.tampered): it never
chains on from whatever it finds, so a cut cannot be re-anchored by the next recorded refusal. A command that
changes the host calls `require_intact` before it starts, so no change is made that could not be recorded.
The one way past a broken chain is `reset`: it moves the broken files aside as evidence and starts a new chain
whose first entry records the break; compliance flags it until someone `acknowledge`s it (itself an entry).

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
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write
from gptossctl.install.layout import Layout, check_confined, install_lock
from gptossctl.install.release import current_version

GENESIS = "0" * 64
LOG = "audit.jsonl"
HEAD = "audit.head"
ANCHOR_SCHEMA = "gptossctl.audit-anchor/1"
RESET_SCHEMA = "gptossctl.audit-reset/1"
ACK_SCHEMA = "gptossctl.audit-acknowledge/1"
MAX_LINE = 1 << 20
MAX_REASON = 2000
MAX_RESET_FINDINGS = 50
# How far an entry may be dated before its predecessor, and "now" before the newest entry: NTP steps and
# clocks of hosts that share a log differ by seconds, so 5 minutes is no false alarm, while a clock set back
# to look before an expiry or an incident window moves hours or days.
CLOCK_SLACK = timedelta(minutes=5)
_BASE = frozenset({"seq", "time", "user", "command", "instance", "bundle_sha256", "result", "detail", "prev", "hash"})
RESET_HINT = ("keep the log as evidence and compare it with your log collector's copy ('gptossctl audit verify' "
              "lists what is wrong); once investigated, start a new chain that records the break: "
              "gptossctl audit reset --reason TEXT --yes")


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


def entry_time(entry: Mapping[str, Any]) -> datetime | None:
    """An entry's time as an aware datetime; None when it has none that parses (older or damaged entries)."""
    raw = entry.get("time")
    try:
        when = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return when if when is not None and when.tzinfo is not None else None


def newest_time(records: Sequence[Mapping[str, Any]]) -> datetime | None:
    return max((t for t in map(entry_time, records) if t is not None), default=None)


def checked_now(records: Sequence[Mapping[str, Any]], now: datetime | None = None) -> datetime:
    """"Now" for judging expiry (bundles, trust roots), checked against the chain: a clock more than
    CLOCK_SLACK behind the newest entry was set back (an expired bundle would look valid): exit 1
    (clock.behind_audit). The one place install, compliance and every change (require_intact) take it from."""
    now = now or datetime.now(UTC)
    newest = newest_time(records)
    if newest is not None and now < newest - CLOCK_SLACK:
        raise CheckFailed(f"the clock says {now.isoformat(timespec='seconds')}, but the audit log holds an entry "
                          f"dated {newest.isoformat(timespec='seconds')}: the clock is behind the host's own records",
                          code="clock.behind_audit", findings=[Finding(
                              "clock.behind_audit", "clock", f"now is more than {CLOCK_SLACK} before the newest "
                              "audit entry: expiry cannot be judged, and an entry written now would be backdated")],
                          hint="set the clock right (check NTP: timedatectl status; chronyc tracking), then run "
                               "the command again")
    return now


def installed_instances(root: Path) -> tuple[str, ...]:
    """The instances under root with a current release: each was installed, so the log must hold entries."""
    layout = Layout(root)
    return tuple(n for n in layout.instances() if current_version(Layout(root, n)) is not None)


@dataclass(frozen=True)
class AuditReport:
    path: Path
    entries: int
    head: str | None
    installed: tuple[str, ...] = ()  # the instances installed when the chain was checked
    records: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)  # the verified entries

    @property
    def pending_reset(self) -> dict[str, Any] | None:
        return pending_reset(self.records)

    def to_dict(self) -> dict[str, Any]:
        pending = self.pending_reset
        return {"path": str(self.path), "entries": self.entries, "head": self.head, "intact": True,
                "unacknowledged_reset": pending["seq"] if pending else None}


@dataclass(frozen=True)
class ChainState:
    """What the chain holds and everything wrong with it (no findings: intact). `records` are the entries that
    parse, in order, also from a broken chain (for evidence only: nothing broken is trusted)."""

    path: Path
    findings: tuple[Finding, ...]
    entries: int
    head: str | None
    seq: int
    installed: tuple[str, ...]
    records: tuple[dict[str, Any], ...]

    def report(self) -> AuditReport:
        if self.findings:
            raise CheckFailed("the audit log was tampered with", code="audit.tampered", findings=self.findings,
                              hint="keep this copy as evidence; compare with the copy your log collector holds")
        return AuditReport(self.path, self.entries, self.head, self.installed, self.records)


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


def _read_head(log_dir: Path) -> tuple[str, str] | None:
    head = log_dir / HEAD
    text = _read_small(head) if head.exists() or head.is_symlink() else None
    if text is None:
        return None
    want_seq, _, want_hash = text[:200].decode("ascii", "replace").strip().partition(" ")
    return want_seq, want_hash


def _walk(lines: list[bytes], where: Path) -> tuple[list[Finding], dict[int, str], int, str, int,
                                                      list[dict[str, Any]]]:
    """Check the chain line by line: findings, seq -> hash of every good entry, last seq and hash, count, and
    the entries that parse."""
    findings: list[Finding] = []
    seen: dict[int, str] = {}
    records: list[dict[str, Any]] = []
    prev_hash, seq, count = GENESIS, 0, 0
    prev_time: datetime | None = None
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
        when = entry_time(entry)
        if when is not None and prev_time is not None and when < prev_time - CLOCK_SLACK:
            findings.append(Finding("audit.time_reversed", at, f"entry {entry['seq']} is dated {entry.get('time')}, "
                                    f"more than {CLOCK_SLACK} before the entry it follows: it was backdated, or "
                                    "written while the clock was set back"))
        prev_time = when
        seen[entry["seq"]] = entry["hash"]
        records.append(entry)
        prev_hash, seq, count = entry["hash"], entry["seq"], count + 1
    return findings, seen, seq, prev_hash, count, records


def _examine(log_dir: Path, lines: list[bytes] | None, *, anchor: Path | None,
             installed: Sequence[str]) -> ChainState:
    """Everything `verify` checks, over the log's lines (None: the log is missing)."""
    path = log_dir / LOG
    anchored = _read_anchor(anchor)
    names = ", ".join(installed)
    if lines is None:
        findings = []
        if anchored is not None:
            findings.append(Finding("audit.missing", str(path), f"the log is missing, but the anchor {anchor} "
                                    f"records entry {anchored[0]}: the log was deleted"))
        elif installed:
            findings.append(Finding("audit.missing", str(path), f"the log is missing, but {names} is installed "
                                    "and every install is recorded: the log was deleted (with its head and anchor)"))
        return ChainState(path, tuple(findings), 0, None, 0, tuple(installed), ())
    findings, seen, seq, last_hash, count, records = _walk(lines, path)
    head = _read_head(log_dir)
    if head is not None:
        if (str(seq), last_hash) != head:
            findings.append(Finding("audit.truncated", str(path), f"the log ends at entry {seq}, the head file records "
                                    f"entry {head[0]}: entries were cut from the end or the head was replaced"))
    elif count:
        findings.append(Finding("audit.head_missing", str(log_dir / HEAD), "the head file is missing: the end of the "
                                "log cannot be checked against it"))
    if anchor is not None and anchored is None and count:
        findings.append(Finding("audit.anchor_missing", str(anchor), f"the log holds {count} entries but the anchor "
                                "is missing, unreadable or not a file: cutting entries off the end cannot be "
                                "detected, and deleting the anchor is how such a cut is hidden"))
    elif anchored is not None and seen.get(anchored[0]) != anchored[1]:
        findings.append(Finding("audit.truncated", str(path), f"the anchor {anchor} records entry {anchored[0]}, which "
                                "the log no longer holds as written: entries were cut or the log was replaced"))
    elif anchored is not None and anchored != (seq, last_hash):
        findings.append(Finding("audit.beyond_anchor", str(path), f"the log ends at entry {seq}, but the anchor "
                                f"{anchor} records entry {anchored[0]}, and every append rewrites the anchor: "
                                "entries after it were added outside gptossctl"))
    if count == 0 and anchored is None and installed:
        findings.append(Finding("audit.missing", str(path), f"the log holds no entries, but {names} is installed "
                                "and every install is recorded: the log was emptied (with its anchor)"))
    return ChainState(path, tuple(findings), count, last_hash if count else None, seq, tuple(installed),
                      tuple(records))


def _read_lines(path: Path) -> list[bytes] | None:
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with os.fdopen(_open_log(path, os.O_RDONLY), "rb") as f:
            return f.read().split(b"\n")
    except OSError as exc:
        raise CheckFailed(f"the audit log cannot be read: {exc.strerror}", code="audit.unreadable",
                          hint="run as root; the log is 0640 root") from None


def inspect(log_dir: Path, *, anchor: Path | None = None, installed: Sequence[str] = ()) -> ChainState:
    """The chain and every finding about it, without raising for them (compliance reads both)."""
    try:
        lines = _read_lines(log_dir / LOG)
    except CheckFailed as exc:
        if exc.code != "audit.tampered":
            raise
        return ChainState(log_dir / LOG, tuple(exc.findings), 0, None, 0, tuple(installed), ())
    return _examine(log_dir, lines, anchor=anchor, installed=installed)


def inspect_root(root: Path) -> ChainState:
    layout = Layout(root)
    return inspect(layout.log_dir, anchor=layout.audit_anchor, installed=installed_instances(root))


def verify(log_dir: Path, *, anchor: Path | None = None, installed: Sequence[str] = ()) -> AuditReport:
    """Walk the chain; CheckFailed naming every broken, unreadable or missing part and why. `installed`: the
    instances installed, for which a missing or empty log is itself tampering."""
    return inspect(log_dir, anchor=anchor, installed=installed).report()


def verify_root(root: Path) -> AuditReport:
    """`verify` of a root's log, anchor and installed instances (what `audit verify` and compliance check)."""
    return inspect_root(root).report()


def require_intact(root: Path) -> AuditReport:
    """Called before a change starts: a change whose entry could not be written is never made. Exit 1
    (audit.tampered) naming what is broken, with the way out (investigate, then `audit reset`)."""
    check_confined(root)
    try:
        report = verify_root(root)
    except CheckFailed as exc:
        if exc.code != "audit.tampered":
            raise
        raise CheckFailed("the audit chain is broken: refusing a change it could not record", code="audit.tampered",
                          findings=exc.findings, hint=RESET_HINT) from None
    checked_now(report.records)  # a clock set back: the entry would be backdated (clock.behind_audit)
    return report


def append(log_dir: Path, *, command: list[str], result: str, instance: str | None = None,
           bundle_digest: str | None = None, detail: str | None = None, anchor: Path | None = None,
           installed: Sequence[str] = (), attach: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Append one entry after verifying the whole chain, head and anchor under the log's lock; a broken chain
    is refused (audit.tampered) and nothing is written. `attach`: typed records the entry carries (a seal, a
    reset), covered by its hash."""
    if attach and set(attach) & _BASE:
        raise ValueError(f"attached records may not replace entry fields: {sorted(set(attach) & _BASE)}")
    path = log_dir / LOG
    if not path.exists() and not path.is_symlink():  # refused before the log is created
        _refuse_broken(_examine(log_dir, None, anchor=anchor, installed=installed))
    log_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(log_dir, 0o750)
    fd = _open_log(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.seek(0)
        chain = _examine(log_dir, f.read().split(b"\n"), anchor=anchor, installed=installed)
        _refuse_broken(chain)
        now = checked_now(chain.records)  # never a backdated entry: verify would call the chain tampered
        entry: dict[str, Any] = {
            "seq": chain.seq + 1,
            "time": now.isoformat(timespec="seconds"),
            **_user(), "command": command, "instance": instance, "bundle_sha256": bundle_digest,
            "result": result, "detail": detail, "prev": chain.head or GENESIS, **(attach or {}),
        }
        entry["hash"] = _digest(entry)
        f.write((json.dumps(entry, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
        atomic_write(log_dir / HEAD, f"{entry['seq']} {entry['hash']}\n", 0o640)
        if anchor is not None:
            atomic_write(anchor, json.dumps({"schema": ANCHOR_SCHEMA, "seq": entry["seq"], "hash": entry["hash"],
                                             "log": str(path)}) + "\n", 0o640)
    return entry


def _refuse_broken(chain: ChainState) -> None:
    if chain.findings:
        raise CheckFailed("the audit chain is broken: nothing was appended to it", code="audit.tampered",
                          findings=chain.findings, hint=RESET_HINT)


def record(root: Path, command: list[str], result: str, *, instance: str | None, digest: str | None = None,
           detail: str | None = None, failure: GptossctlError | None = None,
           attach: Mapping[str, Any] | None = None, checked: AuditReport | None = None) -> dict[str, Any] | None:
    """Record a change (or a refusal) in the root's audit log and anchor. A log that cannot be written (a
    read-only or foreign --root, a broken chain) must not hide the outcome: a refusal is still reported as it
    is, with a finding that it went unrecorded; a change that went unrecorded is an error of its own (the
    changing commands check the chain before they start: `require_intact`, whose report is `checked`)."""
    layout = Layout(root)
    try:
        check_confined(root)  # a staged root's log is never written through a link that leads out of it
        installed = checked.installed if checked is not None else installed_instances(root)
        return append(layout.log_dir, command=command, result=result, instance=instance, bundle_digest=digest,
                      detail=detail, anchor=layout.audit_anchor, installed=installed, attach=attach)
    except (OSError, GptossctlError) as exc:
        why = exc.message if isinstance(exc, GptossctlError) else (exc.strerror or str(exc))
        if failure is None:
            if isinstance(exc, CheckFailed) and exc.code == "audit.tampered":
                raise CheckFailed(f"the change was made but could not be recorded: {why}", code="audit.tampered",
                                  findings=exc.findings, hint=RESET_HINT) from None
            raise EnvironmentNotReady(f"the change was made but could not be recorded in {layout.log_dir}: {why}",
                                      code="audit.unwritable", hint="make the log directory writable and check "
                                      "'gptossctl audit verify'") from None
        failure.findings = (*failure.findings, Finding("audit.unrecorded", str(layout.log_dir),
                                                        f"this refusal could not be recorded: {why}"))
        return None


# ---------------------------------------------------------------- recovery: reset, then acknowledge


def pending_reset(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The newest reset entry no acknowledge entry names yet, or None."""
    pending: dict[str, Any] | None = None
    for e in records:
        reset, ack = e.get("reset"), e.get("acknowledge")
        if isinstance(reset, dict) and reset.get("schema") == RESET_SCHEMA:
            pending = dict(e)
        elif isinstance(ack, dict) and ack.get("schema") == ACK_SCHEMA and pending is not None \
                and ack.get("reset_hash") == pending["hash"]:
            pending = None
    return pending


def last_reset(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    return next((dict(e) for e in reversed(records) if isinstance(e.get("reset"), dict)
                 and e["reset"].get("schema") == RESET_SCHEMA), None)


@dataclass(frozen=True)
class ChainEvent:
    """The entry a reset or an acknowledgement wrote, and for a reset where the broken files were kept."""

    entry: dict[str, Any]
    kept: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {"seq": e["seq"], "hash": e["hash"], "result": e["result"], "user": e["user"], "time": e["time"],
                "kept": list(self.kept), **{k: e[k] for k in ("reset", "acknowledge") if k in e}}


def check_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise UsageError("audit reset needs a reason", code="audit.bad_reason",
                         hint="say why the chain broke and who investigated: --reason 'TEXT'")
    if len(text) > MAX_REASON:
        raise UsageError(f"the reason is {len(text)} characters; at most {MAX_REASON}", code="audit.bad_reason",
                         hint="keep the reason short and point to the investigation's ticket or report")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise UsageError("the reason holds control or undecodable characters", code="audit.bad_reason",
                         hint="give the reason as one line of plain text")
    return text


def reset(root: Path, *, reason: str | None) -> ChainEvent:
    """Move a broken chain aside (log, head and anchor kept as *.broken-<time>, 0640) and start a new chain
    whose first entry records the break: the old end (from the anchor, else the head), what verify found, the
    reason and who. Refused when the chain is intact (nothing to reset)."""
    text = check_reason(reason)
    check_confined(root)
    layout = Layout(root)
    if not _reset_findings(inspect_root(root)):  # before the lock: a refusal leaves nothing behind
        raise _nothing_to_reset(layout)
    with install_lock(layout):
        state = inspect_root(root)
        found = _reset_findings(state)
        if not found:
            raise _nothing_to_reset(layout)
        state = replace(state, findings=tuple(found))
        previous = _previous_end(layout)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = tuple(str(layout.live_path(p)) for p in (_set_aside(layout.log_dir / n, stamp) for n in (LOG, HEAD))
                     if p is not None)
        moved = _set_aside(layout.audit_anchor, stamp)
        kept += (str(layout.live_path(moved)),) if moved is not None else ()
        findings = [{"code": f.code, "subject": f.subject, "message": f.message}
                    for f in state.findings[:MAX_RESET_FINDINGS]]
        doc = {"schema": RESET_SCHEMA, "reason": text, "previous": previous, "findings": findings,
               "findings_total": len(state.findings), "kept": list(kept), "installed": list(state.installed)}
        entry = append(layout.log_dir, command=["audit", "reset", f"--reason={text}"], result="reset",
                       detail=text, anchor=layout.audit_anchor, attach={"reset": doc})
    return ChainEvent(entry, kept)


def _reset_findings(state: ChainState) -> list[Finding]:
    """Why a chain may be reset: what verify finds, or a clock behind its newest entry. The latter is also how a
    host gets out after an entry was written while its clock ran ahead (no NTP on an air-gapped site): once the
    clock is right, every change would be refused as backdated until real time passed that entry."""
    found = list(state.findings)
    try:
        checked_now(state.records)
    except CheckFailed as exc:
        found += exc.findings
    return found


def _nothing_to_reset(layout: Layout) -> UsageError:
    return UsageError(f"the audit chain in {layout.log_dir} is intact: there is nothing to reset",
                      code="audit.nothing_to_reset",
                      hint="'gptossctl audit verify' shows it intact; reset only a chain that verify calls tampered")


def _previous_end(layout: Layout) -> dict[str, Any] | None:
    """The old chain's newest entry as the anchor (else the head) recorded it: what a collector's copy should
    end with."""
    anchored = _read_anchor(layout.audit_anchor)
    if anchored is not None and anchored[0] >= 0:
        return {"seq": anchored[0], "hash": anchored[1], "from": "anchor"}
    head = _read_head(layout.log_dir)
    if head is not None and head[0].isdigit():
        return {"seq": int(head[0]), "hash": head[1][:64], "from": "head"}
    return None


def _set_aside(path: Path, stamp: str) -> Path | None:
    """Rename a broken audit file (whatever stands there: a file, a link, a FIFO) to <name>.broken-<stamp>."""
    if not path.exists() and not path.is_symlink():
        return None
    dst = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while dst.exists() or dst.is_symlink():
        n += 1
        dst = path.with_name(f"{path.name}.broken-{stamp}.{n}")
    os.rename(path, dst)
    if stat.S_ISREG(dst.lstat().st_mode):
        os.chmod(dst, 0o640)
    return dst


def acknowledge(root: Path) -> ChainEvent:
    """Record that an operator has seen the newest reset (compliance stops flagging it). Refused on a broken
    chain (exit 1) and when no reset waits (exit 2)."""
    report = require_intact(root)
    pending = report.pending_reset
    if pending is None:
        raise UsageError("no reset of the audit chain waits for acknowledgement", code="audit.nothing_to_acknowledge",
                         hint="'gptossctl compliance check' names a reset that needs acknowledging; there is none")
    why = pending["reset"].get("reason")
    entry = record(root, ["audit", "acknowledge"], "acknowledged", instance=None, checked=report,
                   detail=f"reset at entry {pending['seq']} ({pending.get('time')}, by {pending.get('user')}): {why}",
                   attach={"acknowledge": {"schema": ACK_SCHEMA, "reset_seq": pending["seq"],
                                           "reset_hash": pending["hash"]}})
    assert entry is not None  # record raises when a change goes unrecorded
    return ChainEvent(entry)
