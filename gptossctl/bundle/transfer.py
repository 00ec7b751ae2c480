"""Journaled, verifying, resumable copies of pieces: the engine under split, join, copy and apply.

Flow: the caller plans jobs (a destination range, the signed digest it must have, the sources that
may hold its bytes) -> lock the work directory and read its journal (ranges already verified) ->
check the free space for the rest -> copy each remaining range inside the kernel and hash what
landed (hashing.copy_verified), on every core -> every second or two (and at the end) flush the
filesystem, then journal what was verified before the flush -> report the bytes copied and reused,
and every piece that no source could supply. A source that fails (short, damaged, unreadable) is
skipped for the next one. The caller renames the work directory (or each file) into place only when
nothing is left, so a destination never looks complete before it is; killed at any moment (Ctrl-C,
SIGKILL, a full or pulled disk), the next run copies only what is not journaled.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gptossctl.bundle.hashing import (
    SLICE,
    Progress,
    ShortFile,
    copy_verified,
    default_workers,
    open_read,
    open_write,
)
from gptossctl.bundle.pieces import Source
from gptossctl.errors import (
    CheckFailed,
    EnvironmentNotReady,
    GptossctlError,
    Interrupted,
    ServiceUnavailable,
    UsageError,
)
from gptossctl.fsutil import check_work_dir, parse_json

JOURNAL_NAME = ".gptossctl-transfer.jsonl"
CHECKPOINT_BYTES = 1 << 30
CHECKPOINT_SECONDS = 2.0
JOURNAL_SCHEMA = "gptossctl.transfer-journal/1"
MAX_JOURNAL = 256 << 20  # characters: a record per verified range is far less, even for a 120b bundle
_MARGIN = 16 << 20
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if ctypes.util.find_library("c") else None


@dataclass(frozen=True)
class Job:
    """One range of a destination file and the signed digest its bytes must have."""

    dst: str  # relative to the work directory, POSIX
    offset: int
    length: int
    sha256: str
    sources: tuple[Source, ...]  # tried in order until one yields the right bytes
    label: str  # what the range is (a manifest piece, a part header), for findings

    @property
    def record(self) -> JournalRecord:
        return JournalRecord(self.dst, self.offset, self.length, self.sha256)


@dataclass(frozen=True)
class JournalRecord:
    """A journal line: these bytes of dst were written, hashed to sha256 and flushed to disk."""

    dst: str
    offset: int
    length: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps({"dst": self.dst, "offset": self.offset, "length": self.length, "sha256": self.sha256})

    @classmethod
    def from_json(cls, line: str) -> JournalRecord | None:
        d = _record_doc(line)
        try:
            rec = cls(d["dst"], d["offset"], d["length"], d["sha256"]) if d is not None else None
        except KeyError:
            rec = None
        if rec is None:
            return None  # a line torn by the interruption: that range is copied again
        ok = isinstance(rec.dst, str) and isinstance(rec.offset, int) and isinstance(rec.length, int)
        return rec if ok and isinstance(rec.sha256, str) else None


@dataclass(frozen=True)
class Failure:
    job: Job
    reasons: tuple[str, ...]  # one per source tried; empty when there was no source at all


@dataclass(frozen=True)
class TransferReport:
    copied_bytes: int
    reused_bytes: int
    failures: tuple[Failure, ...]
    journal_reset: str | None = None  # why an earlier journal was not used (its ranges were copied again)


@dataclass(frozen=True)
class TransferOptions:
    workers: int | None = None
    progress: Progress | None = None
    on_total: Callable[[int], None] | None = None
    limit_rate: int | None = None  # bytes per second over all workers; None: as fast as the disks go
    margin: int = _MARGIN


class _Limiter:
    """A shared schedule: each slice reserves its share of time at the given rate, then waits for it."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class _Stop(Exception):
    """Raised inside a worker when the run is being stopped (Ctrl-C or another worker's failure)."""


@dataclass
class _Run:
    """One run's shared state. Verified ranges are journaled in checkpoints: one syncfs of the work
    directory's filesystem puts every range verified since the last checkpoint on the disk, then their
    records are appended; the journal never claims bytes a pulled disk or a power cut could lose, and
    there is one flush per checkpoint, not one per file (a wheelhouse has hundreds)."""

    work: Path
    work_fd: int  # the work directory as opened once: every write below it is relative to this descriptor
    journal: IO[str]
    progress: Progress
    limiter: _Limiter | None
    slice_size: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    flushing: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    pending: list[JournalRecord] = field(default_factory=list)
    pending_bytes: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)

    def advance(self, n: int) -> None:
        if self.stop.is_set():
            raise _Stop
        if self.limiter is not None:
            self.limiter.take(n)
        self.progress(n)

    def verified(self, rec: JournalRecord) -> None:
        with self.lock:
            self.pending.append(rec)
            self.pending_bytes += rec.length
            due = (self.pending_bytes >= CHECKPOINT_BYTES
                   or time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS)
        if due:
            self.checkpoint(wait=False)

    def checkpoint(self, *, wait: bool) -> None:
        """Flush the filesystem, then journal what was verified before the flush began."""
        if not self.flushing.acquire(blocking=wait):
            return  # another worker is checkpointing; these records go with the next one
        try:
            with self.lock:
                records, self.pending, self.pending_bytes = self.pending, [], 0
                self.last_checkpoint = time.monotonic()
            if not records:
                return
            _syncfs_fd(self.work_fd, self.work)
            with self.lock:
                for rec in records:
                    self.journal.write(rec.to_json() + "\n")
                self.journal.flush()
        except OSError as exc:
            raise write_error(exc, self.work / JOURNAL_NAME) from None
        finally:
            self.flushing.release()


def run_transfer(work: Path, jobs: Sequence[Job], opts: TransferOptions | None = None) -> TransferReport:
    """Copy every job not yet journaled in `work`; return what happened. Never renames anything."""
    opts = opts or TransferOptions()
    check_work_dir(work)  # a planted link or someone else's directory: refused before anything is written
    if not work.exists():  # refuse a disk that is too small before anything is created on it
        _check_space(_existing_ancestor(work), sum(j.length for j in jobs), opts.margin)
    try:
        work.mkdir(parents=True, exist_ok=True)
        work_fd = _open_work(work)
    except OSError as exc:
        raise write_error(exc, work) from None
    try:
        try:
            for d in sorted({Path(j.dst).parent for j in jobs}):
                _makedirs_at(work_fd, d)  # once here, not once per piece
            journal = _open_journal(work, work_fd)
        except OSError as exc:
            raise write_error(exc, work) from None
        try:
            return _transfer(work, work_fd, journal, jobs, opts)
        finally:
            journal.close()
    finally:
        os.close(work_fd)


def _transfer(work: Path, work_fd: int, journal: IO[str], jobs: Sequence[Job], opts: TransferOptions) -> TransferReport:
    try:
        done, reset = _read_journal(work, work_fd, journal, {j.dst for j in jobs})
    except OSError as exc:
        raise write_error(exc, work / JOURNAL_NAME) from None
    todo = [j for j in jobs if j.record not in done]
    reused = sum(j.length for j in jobs if j.record in done)
    need = sum(j.length for j in todo)
    _check_space(work, need, opts.margin)
    if opts.on_total:
        opts.on_total(need)
    rate = opts.limit_rate
    run = _Run(work, work_fd, journal, opts.progress or (lambda _n: None), _Limiter(rate) if rate else None,
               max(256 << 10, min(SLICE, rate // 4)) if rate else SLICE)
    failures = _run_all(run, todo, opts.workers)
    copied = sum(j.length for j in todo) - sum(f.job.length for f in failures)
    return TransferReport(copied, reused, tuple(failures), reset)


def _open_work(work: Path) -> int:
    """The work directory, opened once without following a link and checked to be ours: a directory swapped
    in under its name later (by whoever can write its parent) receives nothing, as every write is relative
    to this descriptor."""
    try:
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        check_work_dir(work)  # a link (or a file) put there since the first check: refused as such
        raise
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        check_work_dir(work)  # raises, naming it
        raise OSError(errno.EPERM, "the work directory changed owner", str(work))
    return fd


def _makedirs_at(work_fd: int, rel: Path) -> None:
    """mkdir -p of a relative path below the work directory, never following a link."""
    parts = [p for p in rel.parts if p not in ("", ".")]
    for i in range(1, len(parts) + 1):
        sub = os.path.join(*parts[:i])
        try:
            os.mkdir(sub, 0o755, dir_fd=work_fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(sub, dir_fd=work_fd, follow_symlinks=False).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", sub) from None


def _open_journal(work: Path, work_fd: int) -> IO[str]:
    # Text with errors="replace": a journal of binary garbage reads as lines that are no record, never a crash.
    fd = os.open(JOURNAL_NAME, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=work_fd)
    journal = open(fd, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115 - held (and locked)
    try:
        fcntl.flock(journal.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        journal.close()
        raise EnvironmentNotReady(f"another gptossctl is writing {work}", code="transfer.locked",
                                  hint="wait for it to finish, or stop it and run again to resume") from None
    return journal


def _read_journal(work: Path, work_fd: int, journal: IO[str], planned: set[str]) -> tuple[set[JournalRecord], str | None]:
    """The records still backed by bytes on disk, and why an existing journal was discarded (None: it was not).
    The journal is not signed: a record's `dst` is looked at only when it is a destination this run planned
    (from signed content), so a line naming `../../etc/shadow` never reaches the filesystem."""
    journal.seek(0)
    text = journal.read(MAX_JOURNAL + 1)
    lines = text.splitlines()
    if not lines or len(text) > MAX_JOURNAL or _schema_of(lines[0]) != JOURNAL_SCHEMA:
        # New, damaged, or written by another version of this format: trust none of it and start it over.
        reset = None if not lines else f"the journal in {work} was not one this version writes: copying from scratch"
        journal.truncate(0)
        journal.write(json.dumps({"schema": JOURNAL_SCHEMA}) + "\n")
        journal.flush()
        return set(), reset
    done = set()
    for line in lines[1:]:
        rec = JournalRecord.from_json(line)
        # A record counts only while its bytes are still there (a crash can lose a new directory entry).
        if rec is not None and rec.dst in planned and _size(rec.dst, work_fd) >= rec.offset + rec.length:
            done.add(rec)
    return done, None


def _record_doc(line: str) -> dict[str, Any] | None:
    """One journal line as an object, through the one bounded reader (deep, NaN, duplicate keys: None)."""
    try:
        doc = parse_json(line, where="a line", what="transfer journal", max_depth=2)
    except UsageError:
        return None
    return doc if isinstance(doc, dict) else None


def _schema_of(line: str) -> object:
    doc = _record_doc(line)
    return doc.get("schema") if doc is not None else None


def human_bytes(n: int) -> str:
    """GiB for big numbers, MiB or bytes for small ones (never "0.00 GiB" on a small disk)."""
    if n >= 1 << 30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _size(rel: str, work_fd: int) -> int:
    try:
        return os.stat(rel, dir_fd=work_fd, follow_symlinks=False).st_size
    except OSError:
        return -1


def _existing_ancestor(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return probe


def _check_space(work: Path, need: int, margin: int) -> None:
    free = shutil.disk_usage(work).free
    if need + margin > free:
        raise CheckFailed(
            f"not enough disk at {work}: {human_bytes(need)} to write, {human_bytes(free)} free",
            code="transfer.insufficient_disk",
            hint=f"free {(need + margin - free) / 2**30:.2f} GiB or choose another destination, then run "
                 "again: what is already verified there is kept")


def _run_all(run: _Run, todo: list[Job], workers: int | None) -> list[Failure]:
    failures: list[Failure] = []
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    futures: list[Future[Failure | None]] = [pool.submit(_run_job, run, j) for j in
                                             sorted(todo, key=lambda j: -j.length)]
    try:
        for fut in futures:
            failure = fut.result()
            if failure is not None:
                failures.append(failure)
        run.checkpoint(wait=True)  # everything verified is on the disk before anything is renamed
    except KeyboardInterrupt:
        run.stop.set()
        _keep_what_is_verified(run)
        raise Interrupted("interrupted: verified pieces are kept", code="transfer.interrupted",
                          hint="run the same command again to resume") from None
    except BaseException:
        run.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _keep_what_is_verified(run: _Run) -> None:
    """On Ctrl-C: let the pieces in flight stop, then journal what was verified (best effort)."""
    with contextlib.suppress(GptossctlError):  # interrupted anyway: what is not journaled is copied again
        run.checkpoint(wait=True)


def _run_job(run: _Run, job: Job) -> Failure | None:
    dst = run.work / job.dst
    try:
        fd = os.open(job.dst, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=run.work_fd)
    except OSError as exc:
        raise write_error(exc, dst) from None
    try:
        reasons: list[str] = []
        for src in job.sources:
            reason = _try_source(run, job, src, fd, dst)
            if reason is None:
                return None
            reasons.append(reason)
        return Failure(job, tuple(reasons))
    finally:
        os.close(fd)


def _try_source(run: _Run, job: Job, src: Source, fd: int, dst: Path) -> str | None:
    """Copy job from src; None when the bytes landed right and were journaled, else why not."""
    try:
        sfd = open_read(src.path)
    except OSError as exc:
        return f"{src.origin}: cannot open ({exc.strerror})"
    try:
        digest = copy_verified(sfd, src.offset, fd, job.offset, job.length, progress=run.advance,
                               slice_size=run.slice_size)
    except ShortFile:
        return f"{src.origin}: shorter than recorded"
    except OSError as exc:
        raise write_error(exc, dst) from None
    finally:
        os.close(sfd)
    if digest != job.sha256:
        return f"{src.origin}: SHA-256 differs from the signed manifest"
    run.verified(job.record)
    return None


def write_error(exc: OSError, dst: Path) -> Exception:
    """The error to raise for a failed write into dst: full disk 4, file too large 1, other I/O 4."""
    if exc.errno in _DISK_FULL:
        return ServiceUnavailable(f"the destination disk is full while writing {dst}", code="transfer.disk_full",
                                  hint="free space or choose another destination, then run the same command "
                                       "again: verified pieces are kept and the rest is copied")
    if exc.errno == errno.EFBIG:
        return CheckFailed(f"the destination filesystem cannot hold a file as large as {dst.name}",
                           code="transfer.file_too_large",
                           hint="FAT32 holds files under 4 GiB: carry parts ('gptossctl bundle split "
                                "--part-size fat32') or format the medium as exFAT or ext4")
    return ServiceUnavailable(f"I/O error while copying into {dst}: {exc.strerror or exc}",
                              code="transfer.io_failed",
                              hint="check the media (was a disk pulled?), then run the same command again "
                                   "to resume")


def _syncfs_fd(fd: int, path: Path) -> None:
    """syncfs on an open descriptor (the work directory as opened)."""
    if _LIBC is None or not hasattr(_LIBC, "syncfs"):
        os.sync()
    elif _LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def syncfs(path: Path) -> None:
    """Flush the filesystem holding path (one journal commit for every file written there)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _LIBC is None or not hasattr(_LIBC, "syncfs"):
            os.sync()
        elif _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_small(path: Path, data: bytes) -> None:
    """A small file written whole and flushed (manifest copies, headers, indexes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def remove_strays(work: Path, keep: set[str]) -> None:
    """Files a resumed run does not plan (another bundle's, an older attempt's) must not stay. The work
    directory must be ours and no link (check_work_dir); the walk is relative to directory descriptors and
    follows no link, at the top or below, so nothing outside `work` is ever unlinked."""
    check_work_dir(work)
    for dirpath, _dirs, files, dirfd in os.fwalk(work, follow_symlinks=False):
        for name in files:
            rel = (Path(dirpath) / name).relative_to(work).as_posix()
            if rel not in keep and rel != JOURNAL_NAME:
                os.unlink(name, dir_fd=dirfd)


def finish_files(work: Path, sizes: dict[str, int]) -> None:
    """Cut every file to its exact size (a reused work directory may hold longer leftovers)."""
    for rel, size in sizes.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_write(path, truncate=False)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
                os.fsync(fd)
        finally:
            os.close(fd)


def failure_reasons(failure: Failure) -> str:
    return "; ".join(failure.reasons) or "no source holds it"
