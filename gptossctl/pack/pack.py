"""Pack a bundle from local sources: plan the files, copy-and-hash them, write and sign the manifest.

Work happens in DIR.partial with a journal of finished files; an interrupted pack run again with
the same arguments resumes without copying finished files again, and DIR appears only complete,
by a rename at the very end.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from gptossctl import __version__
from gptossctl.bundle.dsse import PAYLOAD_TYPE, Envelope, Signature
from gptossctl.bundle.hashing import SHARD_SIZE, CopyResult, Progress, copy_and_hash, default_workers
from gptossctl.bundle.keys import SigningKey
from gptossctl.bundle.layout import (
    ENVELOPE,
    JOURNAL,
    MANIFEST,
    PARTIAL_SUFFIX,
    PAYLOAD,
    SUMS,
    path_collisions,
    unsafe_path_reason,
)
from gptossctl.bundle.manifest import MANIFEST_SCHEMA, FileEntry, Manifest, sha256sums_text
from gptossctl.bundle.transfer import human_bytes
from gptossctl.errors import CheckFailed, EnvironmentNotReady, UsageError
from gptossctl.fsutil import check_not_inside, check_work_dir, write_error
from gptossctl.pack.gather import Gathered, gather
from gptossctl.pack.sbom import SbomInput, build_sbom
from gptossctl.pack.spec import BundleSpec, parse_duration

_DISK_MARGIN = 64 << 20


@dataclass(frozen=True)
class PlannedFile:
    src: Path
    dest: str  # relative to payload/
    component: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class PackResult:
    path: Path
    manifest: Manifest = field(repr=False)
    copied: int
    reused: int
    bytes_copied: int
    signers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.path),
            "name": self.manifest.name,
            "version": self.manifest.version,
            "expires": self.manifest.expires.isoformat(),
            "files": len(self.manifest.files),
            "bytes": self.manifest.total_size,
            "copied": self.copied,
            "reused": self.reused,
            "bytes_copied": self.bytes_copied,
            "signers": list(self.signers),
        }


@dataclass(frozen=True)
class PackPlan:
    """What a pack would do (`--dry-run`): files, sizes, downloads, disk needed and free."""

    out: Path
    files: tuple[tuple[str, int | None], ...]
    to_fetch: tuple[str, ...]
    disk_free: int
    components: dict[str, dict[str, Any]]

    @property
    def known_bytes(self) -> int:
        return sum(s or 0 for _p, s in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "dry_run": True, "files": [{"path": p, "size": s} for p, s in self.files],
                "to_fetch": list(self.to_fetch), "known_bytes": self.known_bytes,
                # A Hub pack keeps the download in the scratch cache and copies it: twice the weights.
                "disk_needed": self.known_bytes * (2 if self.to_fetch else 1), "disk_free": self.disk_free,
                "components": self.components}


def plan_pack(
    spec: BundleSpec, spec_dir: Path, scratch: Path, *, model_dir: Path | None = None,
    wheelhouse: Path | None = None, dry_run: bool = False,
) -> tuple[list[PlannedFile], Gathered]:
    """Every file the bundle will hold, gathered into local files (fetched into scratch unless dry_run)."""
    g = gather(spec, spec_dir, scratch, model_dir=model_dir, wheelhouse=wheelhouse, dry_run=dry_run)
    clash = path_collisions(dest for _src, dest, _c, _s in g.items)
    if clash:
        path, other = clash[0]
        raise UsageError(f"{path!r} and {other!r} would be one file on a disk that normalises Unicode (macOS) or "
                         f"ignores case (FAT, exFAT, NTFS){f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''}",
                         code="bundle.path_collision", hint="rename one of them (NFC, distinct beyond case), "
                                                            "then pack again")
    planned = []
    for src, dest, component, _size in g.items:
        reason = unsafe_path_reason(dest)
        if reason:
            raise UsageError(f"{src} would land at an unsafe path {dest!r} ({reason})", code="pack.unsafe_path")
        if src is None:
            continue  # dry run: still on the Hub
        st = src.stat()
        planned.append(PlannedFile(src, dest, component, st.st_size, st.st_mtime_ns))
    return planned, g


def dry_run_pack(spec: BundleSpec, spec_dir: Path, out: Path, *, model_dir: Path | None = None,
                 wheelhouse: Path | None = None) -> PackPlan:
    """What `bundle pack` would do, without downloading or writing anything."""
    _planned, g = plan_pack(spec, spec_dir, out.with_name(out.name + ".scratch"), model_dir=model_dir,
                            wheelhouse=wheelhouse, dry_run=True)
    probe = out.absolute()
    while not probe.exists():
        probe = probe.parent
    return PackPlan(out, tuple((dest, size) for _src, dest, _c, size in g.items), tuple(g.to_fetch),
                    shutil.disk_usage(probe).free, g.components)


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[rec["dest"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by the interruption: that file is copied again
    return done


def _reusable(rec: dict[str, Any] | None, pf: PlannedFile, dst: Path) -> bool:
    if rec is None or rec.get("src_size") != pf.size or rec.get("src_mtime_ns") != pf.mtime_ns:
        return False
    try:
        st = dst.lstat()
    except FileNotFoundError:
        return False
    return st.st_size == pf.size and st.st_mtime_ns == rec.get("dst_mtime_ns")


def bundle_version(now: datetime) -> int:
    """Default version: UTC time as YYYYMMDDHHMM, readable and increasing from one pack to the next."""
    return int(now.strftime("%Y%m%d%H%M"))


def pack_bundle(
    spec: BundleSpec,
    spec_dir: Path,
    out: Path,
    keys: Sequence[SigningKey],
    *,
    model_dir: Path | None = None,
    wheelhouse: Path | None = None,
    version: int | None = None,
    expires_in: str | None = None,
    now: datetime | None = None,
    workers: int | None = None,
    scratch: Path | None = None,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    shard_size: int = SHARD_SIZE,
) -> PackResult:
    """(1) check the output (2) lock OUT.partial (3) gather and plan (4) resume: skip files the journal says are
    done (5) copy-and-hash the rest in parallel (6) SBOM, manifest, signatures (7) rename OUT.partial to OUT."""
    if not keys:
        raise UsageError("no signing key given", code="pack.no_key", hint="pass --key FILE.key (repeatable)")
    ids = [k.keyid for k in keys]
    if len(set(ids)) < len(ids):  # one signature per key: a second adds nothing to the threshold
        raise UsageError("the same signing key is given twice", code="sign.already_signed",
                         hint="give each --key once; a k-of-n policy needs k different keys")
    check_out(out, sources=_source_dirs(spec, spec_dir, model_dir, wheelhouse))
    now = now or datetime.now(UTC)
    lifetime = parse_duration(expires_in or spec.expires_in)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    # Downloads land in scratch, on the output's disk unless told otherwise: /tmp never fills.
    own_scratch = scratch is None
    scratch = scratch or out.with_name(out.name + ".scratch")
    check_work_dir(partial)  # a planted link or someone else's directory: refused before anything is written
    if own_scratch:
        check_work_dir(scratch, what="scratch directory")
    with _locked_partial(partial) as journal:
        planned, gathered = plan_pack(spec, spec_dir, scratch, model_dir=model_dir, wheelhouse=wheelhouse)
        done = _read_journal(partial / JOURNAL)
        todo = [pf for pf in planned if not _reusable(done.get(pf.dest), pf, partial / PAYLOAD / pf.dest)]
        need = sum(pf.size for pf in todo)
        _check_disk(partial, need)
        _remove_unplanned(partial / PAYLOAD, {pf.dest for pf in planned})
        if on_total:
            on_total(need)
        results = {dest: _result_of(done[dest]) for dest in done if dest not in {pf.dest for pf in todo}}
        _copy_all(todo, partial, journal, results, workers=workers, progress=progress, shard_size=shard_size)
        manifest = _seal(spec, partial, planned, gathered, results, keys, version=version, now=now,
                         lifetime=lifetime, shard_size=shard_size)
    (partial / JOURNAL).unlink()
    _fsync_tree(partial)
    os.rename(partial, out)  # the bundle appears complete, or not at all
    if own_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return PackResult(out, manifest, len(todo), len(planned) - len(todo), need, tuple(k.keyid for k in keys))


@contextmanager
def _locked_partial(partial: Path) -> Iterator[IO[str]]:
    """OUT.partial with its journal, locked before anything is planned or fetched (a second pack to the same
    --out copies no byte). A fresh one that fails before its first byte is copied is removed again."""
    fresh = not partial.exists()
    try:
        (partial / PAYLOAD).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {partial}: {exc.strerror}", code="pack.bad_out",
                         hint="give --out in an existing directory you can write") from None
    journal = open(partial / JOURNAL, "a")
    try:
        fcntl.flock(journal.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        journal.close()
        raise EnvironmentNotReady(f"another pack is writing {partial}", code="pack.locked",
                                  hint="wait for it to finish, or stop it and run again to resume") from None
    try:
        yield journal
    except BaseException:
        journal.close()
        if fresh and not any(p.is_file() for p in (partial / PAYLOAD).rglob("*")):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        journal.close()


def _check_disk(partial: Path, need: int) -> None:
    free = shutil.disk_usage(partial).free
    if need + _DISK_MARGIN > free:
        raise CheckFailed(f"not enough disk at {partial}: {human_bytes(need)} to write, {human_bytes(free)} free",
                          code="pack.insufficient_disk", hint="free space or choose another --out on a larger disk")


def _copy_all(todo: Sequence[PlannedFile], partial: Path, journal: IO[str], results: dict[str, CopyResult], *,
              workers: int | None, progress: Progress | None, shard_size: int) -> None:
    """Copy and hash every file not done yet, in parallel, journalling each as it completes."""
    lock = threading.Lock()

    def one(pf: PlannedFile) -> None:
        dst = partial / PAYLOAD / pf.dest
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            res = copy_and_hash(pf.src, dst, shard_size=shard_size, progress=progress or (lambda _n: None))
        except OSError as exc:
            if exc.filename is not None and Path(exc.filename) == Path(pf.src):
                raise EnvironmentNotReady(f"cannot read {pf.src}: {exc.strerror}", code="pack.source_unreadable",
                                          hint="run pack as a user that may read every model file (or make "
                                               "them readable); files already packed are kept to resume") from None
            raise write_error(dst, exc) from None
        if res.size != pf.size:
            raise CheckFailed(f"{pf.src} changed size while being packed", code="pack.source_changed",
                              hint="pack from a source that nothing is writing to")
        rec = {"dest": pf.dest, "src_size": pf.size, "src_mtime_ns": pf.mtime_ns,
               "dst_mtime_ns": dst.stat().st_mtime_ns, "size": res.size, "sha256": res.sha256,
               "shards": list(res.shards)}
        with lock:
            results[pf.dest] = res
            journal.write(json.dumps(rec) + "\n")
            journal.flush()

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for fut in [pool.submit(one, pf) for pf in sorted(todo, key=lambda p: -p.size)]:
            fut.result()


def _seal(spec: BundleSpec, partial: Path, planned: Sequence[PlannedFile], gathered: Gathered,
          results: dict[str, CopyResult], keys: Sequence[SigningKey], *, version: int | None, now: datetime,
          lifetime: int, shard_size: int) -> Manifest:
    """The SBOM, the manifest over every file, SHA256SUMS, and one signature per key."""
    sbom = _write_sbom(partial, spec, gathered, results, version=version, now=now)
    results["sbom/bom.cdx.json"] = sbom
    planned_all = [*planned, PlannedFile(partial / PAYLOAD / "sbom/bom.cdx.json", "sbom/bom.cdx.json", "sbom",
                                         sbom.size, 0)]
    manifest = _build_manifest(spec, planned_all, results, gathered.components, version=version, now=now,
                               lifetime=lifetime, shard_size=shard_size)
    (partial / SUMS).write_bytes(sha256sums_text(manifest.files))
    payload = manifest.to_json_bytes()
    (partial / MANIFEST).write_bytes(payload)
    envelope = Envelope(payload, PAYLOAD_TYPE, ())
    for key in keys:
        envelope = envelope.with_signature(Signature(key.keyid, key.sign(envelope.signed_message())))
    (partial / ENVELOPE).write_bytes(envelope.to_json())
    return manifest


def _source_dirs(spec: BundleSpec, spec_dir: Path, model_dir: Path | None, wheelhouse: Path | None) -> list[Path]:
    dirs = [model_dir, wheelhouse]
    if spec.model.source.dir:
        dirs.append(spec_dir / spec.model.source.dir)
    if spec.model.source.hf_cache:
        dirs.append(spec_dir / spec.model.source.hf_cache)
    if spec.wheels.dir:
        dirs.append(spec_dir / spec.wheels.dir)
    return [d for d in dirs if d is not None]


def check_out(out: Path, *, sources: Sequence[Path]) -> None:
    """The output is new, not a link, and outside every source (a bundle inside its model would pack itself)."""
    if out.is_symlink() or out.exists():
        kind = "a link" if out.is_symlink() else "a directory" if out.is_dir() else "a file"
        raise UsageError(f"{out} already exists ({kind})", code="pack.exists",
                         hint="choose a new --out; a bundle is never overwritten in place")
    check_not_inside(out, sources, code="pack.out_inside_source",
                     hint="write the bundle outside the model directory and the wheelhouse")


def _result_of(rec: dict[str, Any]) -> CopyResult:
    return CopyResult(rec["size"], rec["sha256"], tuple(rec["shards"]))


def _remove_unplanned(payload: Path, keep: set[str]) -> None:
    """A resumed pack whose inputs changed must not carry stale files into the bundle."""
    for dirpath, _dirs, files in os.walk(payload):
        for name in files:
            p = Path(dirpath) / name
            if p.relative_to(payload).as_posix() not in keep:
                p.unlink()


def _write_sbom(partial: Path, spec: BundleSpec, g: Gathered, results: dict[str, CopyResult], *,
                version: int | None, now: datetime) -> CopyResult:
    """The SBOM, from the digests computed while copying (no second read of any wheel)."""
    data = build_sbom(SbomInput(
        bundle_name=spec.name, bundle_version=version or spec.version or bundle_version(now), created=now,
        model_repo=spec.model.repo, model_revision=str(g.components["model"]["revision"]),
        model_license=spec.model.license,
        wheels=[(w, results[f"{comp}/{w.path.name}"].sha256, comp) for w, comp in g.wheels]))
    path = partial / PAYLOAD / "sbom" / "bom.cdx.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return CopyResult(len(data), hashlib.sha256(data).hexdigest(), ())


def _build_manifest(
    spec: BundleSpec,
    planned: Sequence[PlannedFile],
    results: dict[str, CopyResult],
    extra: dict[str, dict[str, Any]],
    *,
    version: int | None,
    now: datetime,
    lifetime: int,
    shard_size: int = SHARD_SIZE,
) -> Manifest:
    entries = []
    for pf in sorted(planned, key=lambda p: p.dest):
        r = results[pf.dest]
        entries.append(FileEntry(path=pf.dest, size=r.size, sha256=r.sha256, component=pf.component,  # type: ignore[arg-type]
                                 shards=r.shards or None))
    by_comp: dict[str, list[FileEntry]] = {}
    for e in entries:
        by_comp.setdefault(e.component, []).append(e)
    components: dict[str, dict[str, Any]] = {
        c: {"files": len(es), "bytes": sum(e.size for e in es)} for c, es in by_comp.items()
    }
    for name, meta in extra.items():
        components.setdefault(name, {}).update(meta)
    created = now.replace(microsecond=0)
    return Manifest(
        schema_=MANIFEST_SCHEMA,
        name=spec.name,
        version=version or spec.version or bundle_version(now),
        created=created,
        expires=created + timedelta(seconds=lifetime),
        min_gptossctl_version=__version__,
        shard_size=shard_size,
        components=components,
        sha256sums=hashlib.sha256(sha256sums_text(entries)).hexdigest(),
        files=tuple(entries),
    )


def _fsync_tree(root: Path) -> None:
    """Flush the small metadata files and directories; payload data was written through the cache."""
    for name in (MANIFEST, ENVELOPE, SUMS):
        fd = os.open(root / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
