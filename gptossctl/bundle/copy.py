"""`bundle copy`: a resumable copy that checks every piece against the signed manifest as it lands.

A bundle directory is rebuilt at DST through DST.partial (assemble.assemble_bundle): each piece is
copied inside the kernel, hashed from the destination's pages, flushed and journaled; DST appears
by a rename only when every piece is there. A part set (or a delta) is copied part by part into
DST (a directory that may already hold parts from other media): each part is built in
DST/.gptossctl-incoming/ (header and pieces verified) and renamed in only when whole. Interrupted in
any way, the next run copies only what is not yet verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gptossctl.bundle.assemble import assemble_bundle
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.partfile import INDEX_NAME, PartFile, PartIndex
from gptossctl.bundle.parts import INCOMING, PartSet, collect_parts, part_failures
from gptossctl.bundle.pieces import PieceKey, PieceRef, Source, bundle_sources, manifest_pieces
from gptossctl.bundle.transfer import (
    JOURNAL_NAME,
    Failure,
    Job,
    TransferOptions,
    TransferReport,
    failure_reasons,
    finish_files,
    run_transfer,
    sync_dir,
    write_error,
)
from gptossctl.bundle.verify import TrustPolicy, check_envelope, read_envelope
from gptossctl.errors import CheckFailed, Finding, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, check_not_inside, read_bytes


@dataclass(frozen=True)
class Copied:
    srcs: tuple[Path, ...]
    dst: Path
    kind: str  # "bundle" or "parts"
    report: TransferReport
    signers: tuple[str, ...]
    parts_copied: tuple[str, ...] = ()
    parts_already_there: tuple[str, ...] = ()
    notes: tuple[Finding, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"src": [str(s) for s in self.srcs], "dst": str(self.dst), "kind": self.kind,
                "bytes_copied": self.report.copied_bytes, "bytes_resumed": self.report.reused_bytes,
                **({"journal_reset": self.report.journal_reset} if self.report.journal_reset else {}),
                "parts_copied": list(self.parts_copied), "parts_already_there": list(self.parts_already_there),
                "signers": list(self.signers),
                "signatures": "checked" if self.signers else "not checked (no --trust): integrity only",
                "ignored": [f.to_dict() for f in self.notes]}


def copy_bundle(src: Path | Sequence[Path], dst: Path, *, policy: TrustPolicy | None = None,
                opts: TransferOptions | None = None) -> Copied:
    """Copy a bundle, or parts (directories or part files, a delta's too) from src to dst, verifying
    as it writes; resumable."""
    srcs = [src] if isinstance(src, Path) else list(src)
    for s in srcs:
        if not s.exists():
            raise UsageError(f"{s} does not exist", code="copy.not_found")
    check_not_inside(dst, srcs, code="copy.out_inside_source", option="DESTINATION")
    bundles = [s for s in srcs if s.is_dir() and (s / ENVELOPE).exists()]
    if bundles and len(srcs) > 1:
        raise UsageError("a bundle directory is copied on its own", code="copy.mixed_sources",
                         hint="copy one bundle at a time; several sources must be parts")
    if bundles:
        return _copy_whole(bundles[0], dst, policy, opts)
    return _copy_parts(srcs, dst, policy, opts)


def _copy_whole(src: Path, dst: Path, policy: TrustPolicy | None, opts: TransferOptions | None) -> Copied:
    envelope = read_envelope(src)
    checked = check_envelope(envelope, policy)
    if checked.findings:
        raise CheckFailed(f"the bundle's signed manifest does not pass ({len(checked.findings)} finding(s))",
                          code="copy.untrusted", findings=checked.findings, hint="nothing was copied")
    manifest = checked.manifest
    sources = {k: [s] for k, s in bundle_sources(manifest, src, origin="source").items()}
    done = assemble_bundle(dst, envelope.to_json(), manifest, sources, opts,
                           describe=_source_failures, verb="copy")
    return Copied((src,), dst, "bundle", done.report, checked.signers)


def _source_failures(failures: list[Failure]) -> list[Finding]:
    return [Finding("bundle.digest_mismatch", f.job.label, failure_reasons(f),
                    hint="the source is damaged: copy this file again from an intact copy, then rerun")
            for f in failures]


def _copy_parts(srcs: list[Path], dst: Path, policy: TrustPolicy | None, opts: TransferOptions | None) -> Copied:
    ps = collect_parts(srcs, policy)
    if ps.checked.findings:
        raise CheckFailed("the parts' signed manifest does not pass", code="copy.untrusted",
                          findings=ps.checked.findings, hint="nothing was copied")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst} is not a directory", code="copy.bad_destination",
                         hint="parts are copied into a directory (it may already hold other parts)")
    work = dst / INCOMING
    todo, there = _parts_to_copy(ps.parts, dst)
    pieces = {p.key: p for p in manifest_pieces(ps.checked.manifest)}
    jobs = [job for part in todo for job in _part_jobs(part, pieces)]
    report = run_transfer(work, jobs, opts)
    failed = {f.job.dst for f in report.failures}
    try:
        copied = _move_in(work, dst, [p for p in todo if p.header.entry.name not in failed])
        for src in srcs:
            # lexists: a dangling link planted as parts.json is not "missing"; atomic_write never writes through one
            if not os.path.lexists(dst / INDEX_NAME) and _index_matches(src / INDEX_NAME, ps):
                atomic_write(dst / INDEX_NAME, read_bytes(src / INDEX_NAME, what="parts index"))
        sync_dir(dst)
    except OSError as exc:
        raise write_error(exc, dst) from None
    if report.failures:
        raise CheckFailed(f"{len(failed)} part(s) could not be copied intact", code="copy.incomplete",
                          findings=part_failures(list(report.failures)),
                          hint="the parts named are damaged at the source: copy them from another medium; "
                               "run the same command again to resume the rest")
    (work / JOURNAL_NAME).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return Copied(tuple(srcs), dst, "parts", report, ps.checked.signers, tuple(copied), tuple(there), tuple(ps.findings))


def _index_matches(path: Path, ps: PartSet) -> bool:
    """parts.json is not signed: it is carried along only when it describes exactly this set (the signed
    bundle, the checked layout); any other is left behind rather than copied next to the parts."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        idx = PartIndex.model_validate_json(read_bytes(path, what="part index"))
    except (ValidationError, GptossctlError, ValueError):
        return False
    return idx.bundle == ps.bundle and idx.layout == ps.layout and idx.kind == ps.kind and idx.base == ps.base


def _move_in(work: Path, dst: Path, parts: list[PartFile]) -> list[str]:
    """Each part whose every byte is verified is renamed into dst: it appears whole, or not at all."""
    moved = []
    for part in parts:
        name = part.header.entry.name
        finish_files(work, {name: part.size})
        (work / name).rename(dst / name)
        moved.append(name)
    return moved


def _parts_to_copy(parts: list[PartFile], dst: Path) -> tuple[list[PartFile], list[str]]:
    """One copy of each part; a part already in dst (same header, same size) is not copied again."""
    todo: dict[str, PartFile] = {}
    there: list[str] = []
    for part in parts:
        name = part.header.entry.name
        target = dst / name
        if name in todo or name in there:
            continue
        if target.exists():
            if _same_part(target, part):
                there.append(name)
                continue
            raise UsageError(f"{target} exists and is not this part", code="copy.name_conflict",
                             hint="move it away (it may be a part of another split), then run again")
        todo[name] = part
    return list(todo.values()), there


def _same_part(target: Path, part: PartFile) -> bool:
    try:
        with open(target, "rb") as f:
            head = f.read(len(part.header_bytes))
        return head == part.header_bytes and target.stat().st_size == part.size
    except OSError:
        return False


def _part_jobs(part: PartFile, pieces: dict[PieceKey, PieceRef]) -> list[Job]:
    """The header and its padding (every byte compared), then each piece against its signed digest."""
    h = part.header
    framing = part.header_bytes + b"\0" * (h.body - len(part.header_bytes))
    jobs = [Job(h.entry.name, 0, h.body, hashlib.sha256(framing).hexdigest(), (Source(part.path, 0, part.label),),
                f"{h.entry.name} header")]
    for path, shard, at in h.entry.pieces:
        p = pieces[(path, shard)]
        jobs.append(Job(h.entry.name, at, p.length, p.sha256, (Source(part.path, at, part.label),), p.label))
    return jobs
