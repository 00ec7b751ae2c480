"""Pack a bundle from local sources: plan the files, copy-and-hash them, write and sign the manifest.

Work happens in DIR.partial with a journal of finished files; an interrupted pack run again with
the same arguments resumes without copying finished files again, and DIR appears only complete,
by a rename at the very end.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.bundle.dsse import PAYLOAD_TYPE, Envelope, Signature
from gptossctl.bundle.hashing import SHARD_SIZE, CopyResult, Progress, copy_and_hash, default_workers
from gptossctl.bundle.keys import SigningKey
from gptossctl.bundle.layout import ENVELOPE, JOURNAL, MANIFEST, PARTIAL_SUFFIX, PAYLOAD, SUMS
from gptossctl.bundle.layout import unsafe_path_reason
from gptossctl.bundle.manifest import MANIFEST_SCHEMA, FileEntry, Manifest, sha256sums_text
from gptossctl.bundle.spec import BundleSpec, parse_duration
from gptossctl.errors import CheckFailed, EnvironmentNotReady, UsageError
from gptossctl.resources import data_dir

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


def _select(root: Path, include: Sequence[str], exclude: Sequence[str]) -> list[tuple[Path, str]]:
    """Files under root (following links: a Hugging Face cache snapshot is links into blobs/)."""
    chosen = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            src = Path(dirpath) / name
            rel = src.relative_to(root).as_posix()
            if any(fnmatch.fnmatchcase(rel, p) for p in exclude):
                continue
            if any(fnmatch.fnmatchcase(rel, p) for p in include):
                chosen.append((src, rel))
    return chosen


def _resolve_dir(given: Path | None, from_spec: str | None, spec_dir: Path, what: str) -> Path | None:
    path = given if given is not None else (spec_dir / from_spec if from_spec else None)
    if path is not None and not path.is_dir():
        raise UsageError(f"{what} directory {path} does not exist", code="pack.source_missing",
                         hint=f"pass an existing directory with --{what}-dir")
    return path


def plan_pack(
    spec: BundleSpec, spec_dir: Path, *, model_dir: Path | None = None, wheelhouse: Path | None = None
) -> list[PlannedFile]:
    """Every file the bundle will hold; pure except for reading directory listings."""
    items: list[tuple[Path, str, str]] = []
    mdir = _resolve_dir(model_dir, spec.model.source.dir, spec_dir, "model")
    if mdir is None:
        raise UsageError("the recipe names no model directory", code="pack.source_missing",
                         hint="pass --model-dir DIR (a Hugging Face layout directory)")
    model_files = _select(mdir, spec.model.include, spec.model.exclude)
    if not any(rel == "config.json" for _, rel in model_files):
        raise UsageError(f"{mdir} has no config.json matching the recipe's include patterns",
                         code="pack.model_incomplete", hint="point --model-dir at a Hugging Face model directory")
    items += [(src, f"model/{rel}", "model") for src, rel in model_files]
    wdir = _resolve_dir(wheelhouse, spec.wheels.dir, spec_dir, "wheelhouse")
    if wdir is not None:
        wheels = sorted(wdir.glob("*.whl"))
        if not wheels:
            raise UsageError(f"wheelhouse {wdir} holds no .whl files", code="pack.source_missing")
        items += [(w, f"wheels/{w.name}", "wheels") for w in wheels]
    for name in spec.profiles:
        src = data_dir("profiles") / f"{name}.yaml"
        if not src.is_file():
            raise UsageError(f"profile {name!r} is not shipped with gptossctl", code="pack.unknown_profile",
                             hint="see 'gptossctl profiles list'")
        items.append((src, f"profiles/{name}.yaml", "profiles"))
    for name in spec.units:
        src = data_dir("systemd") / name
        if not src.is_file():
            raise UsageError(f"unit template {name!r} is not shipped with gptossctl", code="pack.unknown_unit")
        items.append((src, f"systemd/{name}", "units"))
    planned = []
    for src, dest, component in items:
        reason = unsafe_path_reason(dest)
        if reason:
            raise UsageError(f"source file {src} would land at an unsafe path ({reason})", code="pack.unsafe_path")
        st = src.stat()
        planned.append(PlannedFile(src, dest, component, st.st_size, st.st_mtime_ns))
    return planned


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
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> PackResult:
    if not keys:
        raise UsageError("no signing key given", code="pack.no_key", hint="pass --key FILE.key (repeatable)")
    if out.exists():
        raise UsageError(f"{out} already exists", code="pack.exists",
                         hint="choose a new --out; a bundle is never overwritten in place")
    now = now or datetime.now(UTC)
    lifetime = parse_duration(expires_in or spec.expires_in)
    planned = plan_pack(spec, spec_dir, model_dir=model_dir, wheelhouse=wheelhouse)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    (partial / PAYLOAD).mkdir(parents=True, exist_ok=True)
    journal_path = partial / JOURNAL
    journal = open(journal_path, "a")
    try:
        fcntl.flock(journal.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        journal.close()
        raise EnvironmentNotReady(f"another pack is writing {partial}", code="pack.locked",
                                  hint="wait for it to finish, or stop it and run again to resume") from None
    try:
        done = _read_journal(journal_path)
        todo = [pf for pf in planned if not _reusable(done.get(pf.dest), pf, partial / PAYLOAD / pf.dest)]
        need = sum(pf.size for pf in todo)
        free = shutil.disk_usage(partial).free
        if need + _DISK_MARGIN > free:
            raise CheckFailed(
                f"not enough disk at {partial}: {need / 2**30:.2f} GiB to write, {free / 2**30:.2f} GiB free",
                code="pack.insufficient_disk", hint="free space or choose another --out on a larger disk")
        _remove_unplanned(partial / PAYLOAD, {pf.dest for pf in planned})
        if on_total:
            on_total(need)
        results = {dest: _result_of(done[dest]) for dest in done if dest not in {pf.dest for pf in todo}}
        lock = threading.Lock()

        def one(pf: PlannedFile) -> None:
            dst = partial / PAYLOAD / pf.dest
            dst.parent.mkdir(parents=True, exist_ok=True)
            res = copy_and_hash(pf.src, dst, progress=progress or (lambda _n: None))
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
        manifest = _build_manifest(spec, planned, results, version=version, now=now, lifetime=lifetime)
        (partial / SUMS).write_bytes(sha256sums_text(manifest.files))
        payload = manifest.to_json_bytes()
        (partial / MANIFEST).write_bytes(payload)
        envelope = Envelope(payload, PAYLOAD_TYPE, ())
        for key in keys:
            envelope = envelope.with_signature(Signature(key.keyid, key.sign(envelope.signed_message())))
        (partial / ENVELOPE).write_bytes(envelope.to_json())
        journal.close()
        journal_path.unlink()
        _fsync_tree(partial)
        os.rename(partial, out)  # the bundle appears complete, or not at all
    finally:
        if not journal.closed:
            journal.close()
    return PackResult(out, manifest, len(todo), len(planned) - len(todo), need, tuple(k.keyid for k in keys))


def _result_of(rec: dict[str, Any]) -> CopyResult:
    return CopyResult(rec["size"], rec["sha256"], tuple(rec["shards"]))


def _remove_unplanned(payload: Path, keep: set[str]) -> None:
    """A resumed pack whose inputs changed must not carry stale files into the bundle."""
    for dirpath, _dirs, files in os.walk(payload):
        for name in files:
            p = Path(dirpath) / name
            if p.relative_to(payload).as_posix() not in keep:
                p.unlink()


def _build_manifest(
    spec: BundleSpec,
    planned: Sequence[PlannedFile],
    results: dict[str, CopyResult],
    *,
    version: int | None,
    now: datetime,
    lifetime: int,
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
    components["model"].update(name=spec.model.name, repo=spec.model.repo, revision=spec.model.revision,
                               license=spec.model.license)
    if "profiles" in components:
        components["profiles"]["names"] = list(spec.profiles)
    if "units" in components:
        components["units"]["names"] = list(spec.units)
    created = now.replace(microsecond=0)
    return Manifest(
        schema=MANIFEST_SCHEMA,
        name=spec.name,
        version=version or spec.version or bundle_version(now),
        created=created,
        expires=created + timedelta(seconds=lifetime),
        min_gptossctl_version=__version__,
        shard_size=SHARD_SIZE,
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
