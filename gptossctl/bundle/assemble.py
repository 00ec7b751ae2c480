"""Build a bundle directory from pieces found anywhere: another bundle, parts, a delta and its base.

Flow: one transfer job per manifest piece (its sources in order of preference) -> run_transfer into
OUT.partial, which verifies each piece against the signed digest as it lands and journals it ->
cut files to size -> manifest.json, manifest.dsse.json and SHA256SUMS from the signed envelope (the
list is checked against the signed digest) -> flush -> rename OUT.partial to OUT. OUT exists only
complete; an interrupted run resumes from the journal.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.bundle.dsse import parse_envelope
from gptossctl.bundle.layout import ENVELOPE, MANIFEST, PARTIAL_SUFFIX, PAYLOAD, SUMS
from gptossctl.bundle.manifest import sha256sums_text
from gptossctl.bundle.pieces import PieceKey, Source, manifest_pieces
from gptossctl.bundle.transfer import (
    JOURNAL_NAME,
    Failure,
    Job,
    TransferOptions,
    TransferReport,
    finish_files,
    remove_strays,
    run_transfer,
    sync_dir,
    write_error,
    write_small,
)
from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.fsutil import check_work_dir

if TYPE_CHECKING:
    from gptossctl.bundle.manifest import Manifest


@dataclass(frozen=True)
class Assembled:
    path: Path
    report: TransferReport


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def assemble_bundle(
    out: Path,
    envelope_json: bytes,
    manifest: Manifest,
    sources: Mapping[PieceKey, Sequence[Source]],
    opts: TransferOptions | None,
    *,
    describe: Callable[[list[Failure]], list[Finding]],
    verb: str,
) -> Assembled:
    """Write the bundle of `manifest` at `out` from `sources`; raise CheckFailed with
    `describe(failures)` if a piece could not be had from any source (the work is kept to resume)."""
    if out.exists():
        raise UsageError(f"{out} already exists", code=f"{verb}.exists",
                         hint="choose a new output directory; a bundle is never overwritten in place")

    sums = sha256sums_text(manifest.files)
    if hashlib.sha256(sums).hexdigest() != manifest.sha256sums:
        raise CheckFailed("the signed manifest's SHA256SUMS digest does not match its own file list",
                          code=f"{verb}.manifest_inconsistent", hint="the bundle was not written by gptossctl")
    work = partial_of(out)
    jobs = [Job(f"{PAYLOAD}/{p.path}", p.offset, p.length, p.sha256, tuple(sources.get(p.key, ())), p.label)
            for p in manifest_pieces(manifest)]
    if work.exists():
        remove_strays(work, {j.dst for j in jobs})
    report = run_transfer(work, jobs, opts)
    if report.failures:
        raise CheckFailed(f"{len(report.failures)} piece(s) could not be copied intact",
                          code=f"{verb}.incomplete", findings=describe(list(report.failures)),
                          hint="bring an intact copy of what is named and run the same command again: "
                               "verified pieces are kept in " + str(work))
    try:
        _finish(work, out, envelope_json, manifest, sums)
    except OSError as exc:
        raise write_error(exc, work) from None
    return Assembled(out, report)


def _finish(work: Path, out: Path, envelope_json: bytes, manifest: Manifest, sums: bytes) -> None:
    """Every piece is in: exact sizes, the signed top-level files, flushed, then the rename."""
    check_work_dir(work)  # still ours and no link (swapped since the transfer: refused, nothing written there)
    finish_files(work, {f"{PAYLOAD}/{f.path}": f.size for f in manifest.files})
    write_small(work / MANIFEST, _payload_of(envelope_json))
    write_small(work / ENVELOPE, envelope_json)
    write_small(work / SUMS, sums)
    (work / JOURNAL_NAME).unlink()
    for d in sorted({(work / PAYLOAD / f.path).parent for f in manifest.files}, reverse=True):
        sync_dir(d)
    sync_dir(work)
    work.rename(out)  # the bundle appears complete, or not at all
    sync_dir(out.parent)


def _payload_of(envelope_json: bytes) -> bytes:

    return parse_envelope(envelope_json).payload


def discard_partial(out: Path) -> None:
    shutil.rmtree(partial_of(out), ignore_errors=True)
