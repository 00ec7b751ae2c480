"""Split a bundle into parts for removable media, collect parts from anywhere, verify and join them.

Parts are cut at the pieces the signers already signed (files and their `shard_size` slices), so no
new key is needed to split and each part is checked on its own against the signed manifest it
carries (docs/bundle-format.md says why this design and not a signed part index).

split:   signed envelope -> plan: pieces into parts, largest first, first fit -> headers -> transfer
         jobs (each piece copied from the bundle and hashed as it lands) -> parts.json -> rename.
collect: every file of the given directories -> framing (magic, strict header, envelope, padding,
         size) -> group by bundle -> signatures and layout against the signed manifest.
verify:  collect -> hash every piece of every part -> missing, extra and damaged parts, by name.
join:    collect -> every piece has a part that holds it, or name the missing parts -> assemble the
         bundle, each piece verified as it lands; a damaged copy falls back to a duplicate part.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptossctl.bundle.assemble import assemble_bundle, partial_of
from gptossctl.bundle.hashing import SHARD_SIZE, HashRun, Piece, Progress
from gptossctl.bundle.partfile import (
    INDEX_NAME,
    BundleRef,
    DamagedPart,
    Kind,
    NotAPart,
    PartEntry,
    PartFile,
    RenderedLayout,
    header_problems,
    index_bytes,
    layout_problems,
    read_part,
    render_layout,
)
from gptossctl.bundle.pieces import PieceKey, PieceRef, Source, bundle_sources, manifest_digest, manifest_pieces
from gptossctl.bundle.transfer import (
    JOURNAL_NAME,
    Failure,
    Job,
    TransferOptions,
    TransferReport,
    failure_reasons,
    finish_files,
    remove_strays,
    run_transfer,
    sync_dir,
    write_error,
    write_small,
)
from gptossctl.bundle.verify import CheckedEnvelope, TrustPolicy, check_envelope, read_envelope
from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.fsutil import check_not_inside, check_work_dir

if TYPE_CHECKING:
    from gptossctl.bundle.dsse import Envelope
    from gptossctl.bundle.manifest import Manifest

FAT32_MAX = (4 << 30) - 1  # FAT32 refuses files of 4 GiB or more
NAMED_SIZES = {"fat32": FAT32_MAX, "dvd": 4_700_372_992, "dvd-dl": 8_543_666_176, "bd25": 25_025_314_816}
INCOMING = ".gptossctl-incoming"  # where `bundle copy` assembles parts before renaming them in
# ASCII digits only (as durations): a full-width "４G" is a look-alike, not a size.
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)[ \t]*([kmgt]?)(i?b?)$")


MAX_SIZE = 1 << 50  # 1 PiB: beyond any medium; a larger number is a typo


def parse_size(text: str) -> int:
    """'fat32', 'dvd', 'bd25', '4G' or '4GiB' (binary), '4GB' (decimal), or plain bytes."""
    t = text.strip().lower()
    if t in NAMED_SIZES:
        return NAMED_SIZES[t]
    m = _SIZE.match(t)
    if not m:
        raise UsageError(f"cannot read the size {text!r}", code="usage.bad_size",
                         hint=f"write it like 4G, 700MiB, 4700MB or bytes, or one of {', '.join(NAMED_SIZES)}")
    number, unit, suffix = m.groups()
    power = " kmgt".index(unit or " ")
    base = 1000 if suffix == "b" and unit else 1024
    value = float(number) * base**power
    if not 1 <= value <= MAX_SIZE:
        raise UsageError(f"the size {text!r} is outside 1 byte to 1 PiB", code="usage.bad_size",
                         hint="give a size a medium or a link can take, like 4G or 700MiB")
    return int(value)


def _ref(manifest: Manifest, envelope: Envelope) -> BundleRef:
    return BundleRef(name=manifest.name, version=manifest.version, manifest_sha256=manifest_digest(envelope))


def plan_parts(pieces: Sequence[PieceRef], part_size: int, reserve: int) -> list[list[PieceRef]]:
    """Pieces into parts of at most part_size bytes with `reserve` for the header: first fit,
    largest first (1 GiB shards first, small files fill the gaps). Manifest order inside a part."""
    capacity = part_size - reserve
    order = {p.key: i for i, p in enumerate(pieces)}
    bins: list[list[PieceRef]] = []
    room: list[int] = []
    for p in sorted(pieces, key=lambda p: -p.length):
        if p.length > capacity:
            raise UsageError(
                f"--part-size {part_size} leaves {max(capacity, 0)} bytes for data, but {p.label} is "
                f"{p.length} bytes: parts are cut only at the digests the signers signed",
                code="split.part_size_too_small",
                hint=f"use --part-size {p.length + reserve} or more: a part holds whole signed pieces (files, and the "
                     f"{SHARD_SIZE >> 30} GiB shards of larger ones), and this is the largest")
        for i, free in enumerate(room):
            if p.length <= free:
                bins[i].append(p)
                room[i] -= p.length
                break
        else:
            bins.append([p])
            room.append(capacity - p.length)
    return [sorted(b, key=lambda p: order[p.key]) for b in bins] or [[]]


def header_reserve(kind: Kind, ref: BundleRef, base: BundleRef | None, envelope_json: bytes,
                   pieces: Sequence[PieceRef]) -> int:
    """An upper bound of the header: every piece in one part, plus room for one entry per piece."""
    one = render_layout(kind, ref, base, envelope_json, [list(pieces)])
    return -(-(len(one.headers[0]) + 160 * (len(pieces) + 1)) // 4096) * 4096


@dataclass(frozen=True)
class PartsWritten:
    out: Path
    kind: Kind
    bundle: BundleRef
    base: BundleRef | None
    part_size: int
    rendered: RenderedLayout = field(repr=False)
    report: TransferReport = field(repr=False)
    checked: CheckedEnvelope = field(repr=False)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.rendered.layout)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "kind": self.kind, "bundle": self.bundle.model_dump(),
                "base": self.base.model_dump() if self.base else None, "part_size": self.part_size,
                "parts": [{"name": e.name, "size": e.size, "pieces": len(e.pieces)} for e in self.rendered.layout],
                "bytes": self.bytes, "bundle_bytes": self.checked.manifest.total_size,
                "signers": list(self.checked.signers),
                "signatures": "checked" if self.checked.signers else "not checked (no --trust)"}


def write_parts(out: Path, kind: Kind, checked: CheckedEnvelope, envelope: Envelope, envelope_json: bytes,
                pieces: Sequence[PieceRef], sources: dict[PieceKey, Source], *, part_size: int,
                base: BundleRef | None, opts: TransferOptions | None) -> PartsWritten:
    """Plan, write and verify the parts of `pieces` into OUT (through OUT.partial)."""
    if out.exists():
        raise UsageError(f"{out} already exists", code=f"{kind}.exists", hint="choose a new --out directory")
    ref = _ref(checked.manifest, envelope)
    assignment = plan_parts(pieces, part_size, header_reserve(kind, ref, base, envelope_json, pieces))
    rendered = render_layout(kind, ref, base, envelope_json, assignment)
    work = partial_of(out)
    check_work_dir(work)  # a planted link or someone else's directory: refused before a header is written
    if work.exists():
        remove_strays(work, {e.name for e in rendered.layout})  # an earlier, other split's leftovers
    by_key = {p.key: p for p in pieces}
    jobs = []
    for entry, header in zip(rendered.layout, rendered.headers, strict=False):
        _write_header(work / entry.name, header, rendered.body)
        for path, shard, at in entry.pieces:
            p = by_key[(path, shard)]
            jobs.append(Job(entry.name, at, p.length, p.sha256, (sources[p.key],), p.label))
    report = run_transfer(work, jobs, opts)
    if report.failures:
        raise CheckFailed("the source bundle is damaged: it cannot be carried as it is",
                          code=f"{kind}.source_damaged", findings=[
                              Finding("bundle.digest_mismatch", f.job.label, failure_reasons(f),
                                      hint="verify the bundle and obtain an intact copy") for f in report.failures])
    check_work_dir(work)  # still ours and no link (swapped since the transfer: refused, nothing written there)
    try:
        finish_files(work, {e.name: e.size for e in rendered.layout})
        write_small(work / INDEX_NAME, index_bytes(kind, ref, base, part_size, rendered))
        (work / JOURNAL_NAME).unlink()
        sync_dir(work)
        work.rename(out)  # the parts appear together, complete, or not at all
        sync_dir(out.parent)
    except OSError as exc:
        raise write_error(exc, work) from None
    return PartsWritten(out, kind, ref, base, part_size, rendered, report, checked)


def _write_header(path: Path, header: bytes, body: int) -> None:
    """The header and its zero padding, rewritten on every run (a resumed run may find other bytes)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.pwrite(fd, header + b"\0" * (body - len(header)), 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(exc, path) from None


def split_bundle(bundle: Path, out: Path, *, part_size: int = FAT32_MAX, policy: TrustPolicy | None = None,
                 opts: TransferOptions | None = None) -> PartsWritten:
    """Split a bundle into self-describing parts of at most part_size bytes, plus parts.json."""

    if not bundle.is_dir():
        raise UsageError(f"{bundle} is not a bundle directory", code="split.not_a_bundle")
    check_not_inside(out, [bundle], code="split.out_inside_source")
    envelope = read_envelope(bundle)
    checked = _checked(envelope, policy, verb="split")
    envelope_json = envelope.to_json()  # the checked copy in memory, never the file again
    pieces = manifest_pieces(checked.manifest)
    sources = bundle_sources(checked.manifest, bundle, origin="bundle")
    return write_parts(out, "split", checked, envelope, envelope_json, pieces, sources, part_size=part_size,
                       base=None, opts=opts)


def _checked(envelope: Envelope, policy: TrustPolicy | None, *, verb: str) -> CheckedEnvelope:
    checked = check_envelope(envelope, policy)
    if checked.findings:
        raise CheckFailed(f"the bundle's signed manifest does not pass ({len(checked.findings)} finding(s))",
                          code=f"{verb}.untrusted", findings=checked.findings,
                          hint="see each finding; nothing was written")
    return checked


# ---- collecting parts from directories and media ----------------------------------------------------


@dataclass
class PartSet:
    """The parts of one bundle found in the given places, checked as far as framing and signatures go."""

    kind: Kind
    bundle: BundleRef
    base: BundleRef | None
    envelope: Envelope
    envelope_json: bytes
    checked: CheckedEnvelope
    parts: list[PartFile]  # framing and layout checked; duplicates kept (a damaged copy may have a twin)
    layout: tuple[PartEntry, ...]  # the layout most parts share
    findings: list[Finding]  # extra files, damaged framing, parts of other bundles

    @property
    def pieces(self) -> dict[PieceKey, PieceRef]:
        return {p.key: p for p in manifest_pieces(self.checked.manifest)}

    def needed(self) -> list[PieceRef]:
        """The pieces these parts must supply: all of them for a split, the shipped ones for a delta."""
        if self.kind == "split":
            return manifest_pieces(self.checked.manifest)
        pieces = self.pieces
        return [pieces[(path, shard)] for e in self.layout for path, shard, _at in e.pieces]

    def sources(self) -> dict[PieceKey, list[Source]]:
        out: dict[PieceKey, list[Source]] = {}
        for part in self.parts:
            for path, shard, at in part.header.entry.pieces:
                out.setdefault((path, shard), []).append(Source(part.path, at, part.label))
        return out

    def present_numbers(self) -> set[int]:
        return {p.header.part for p in self.parts if p.header.layout == self.layout}


def candidates(places: Sequence[Path]) -> list[Path]:
    """Every file named, or found directly in a named directory (not parts.json, not copy work)."""
    found: list[Path] = []
    for place in places:
        if place.is_dir() and not place.is_symlink():
            found += sorted(Path(e.path) for e in os.scandir(place) if e.name not in (INDEX_NAME, INCOMING))
        elif place.exists() or place.is_symlink():
            found.append(place)
        else:
            raise UsageError(f"{place} does not exist", code="parts.not_found",
                             hint="name the directories (or part files) that hold the parts")
    return found


def collect_parts(places: Sequence[Path], policy: TrustPolicy | None) -> PartSet:
    """Read every candidate's framing; keep the bundle most parts belong to; check it."""
    findings: list[Finding] = []
    parts: list[PartFile] = []
    for path in candidates(places):
        try:
            parts.append(read_part(path))
        except NotAPart as exc:
            findings.append(Finding("parts.extra_file", str(path), f"not a gptossctl part ({exc})",
                                    hint="remove it; if it should be a part, its first bytes are damaged"))
        except DamagedPart as exc:
            findings.append(Finding("parts.damaged", str(path), str(exc), hint="copy this part again"))
    if not parts and not any(p.is_dir() for p in places):
        why = findings[0].message if findings else "not a gptossctl part"
        raise UsageError(f"{', '.join(str(p) for p in places)}: not a bundle directory and {why}",
                         code="bundle.not_a_bundle",
                         hint="give a bundle directory (it holds manifest.dsse.json), a directory of parts, "
                              "or one .part file")
    if not parts:
        raise CheckFailed(f"no gptossctl parts in {', '.join(str(p) for p in places)}", code="parts.none",
                          findings=findings, hint="name the directories that hold the .part files")
    groups: dict[str, list[PartFile]] = {}
    for p in parts:
        groups.setdefault(p.header.bundle.manifest_sha256, []).append(p)
    chosen = max(groups.values(), key=lambda g: (len(g), g[0].header.bundle.version))
    for group in groups.values():
        if group is not chosen:
            findings += [Finding("parts.foreign", str(p.path), f"a part of another bundle, "
                                 f"{p.header.bundle.describe()}", hint="keep parts of different bundles apart")
                         for p in group]
    return _checked_set(chosen, policy, findings)


def _checked_set(group: list[PartFile], policy: TrustPolicy | None, findings: list[Finding]) -> PartSet:
    # The same manifest, but parts split before and after a co-signature carry different envelopes:
    # the one with the most signatures speaks for the set (each is checked against the policy).
    first = max(group, key=lambda p: len(p.envelope.signatures))
    checked = check_envelope(first.envelope, policy)
    findings += checked.findings
    # What the set is called, and every path made for it, comes from the signed manifest; headers are hints.
    signed = _ref(checked.manifest, first.envelope)
    pieces = {p.key: p for p in manifest_pieces(checked.manifest)}
    good: list[PartFile] = []
    for part in group:
        lies = header_problems(part.header, signed)
        if lies:
            findings.append(Finding("parts.header_mismatch", str(part.path), "; ".join(lies[:2]),
                                    hint=f"this part's header was edited: it is not used; copy this part of "
                                         f"{signed.name} v{signed.version} again from its medium"))
            continue
        problems = layout_problems(part.header, pieces)
        if problems:
            findings.append(Finding("parts.damaged", str(part.path), "; ".join(problems[:3]),
                                    hint="copy this part again"))
        else:
            good.append(part)
    layouts: dict[tuple[PartEntry, ...], int] = {}
    for part in good:
        layouts[part.header.layout] = layouts.get(part.header.layout, 0) + 1
    layout = max(layouts, key=lambda lay: layouts[lay]) if layouts else first.header.layout
    h = good[0].header if good else first.header
    return PartSet(h.kind, signed, h.base, first.envelope, first.envelope_json, checked, good, layout, findings)


def missing_findings(ps: PartSet, available: set[PieceKey]) -> list[Finding]:
    """Each part of the layout that no present part replaces, with what it holds."""
    findings = []
    present = ps.present_numbers()
    pieces = ps.pieces
    n = len(ps.layout)
    for i, entry in enumerate(ps.layout, 1):
        if i in present:
            continue  # a present part that fails is reported as damaged, not as missing
        lacking = [pieces[(path, shard)] for path, shard, _at in entry.pieces if (path, shard) not in available]
        if entry.pieces and not lacking:
            continue  # another split of the same bundle supplied every piece of it
        what = ", ".join(p.label for p in lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        findings.append(Finding("parts.missing", entry.name, f"part {i} of {n} is missing ({entry.size} bytes"
                                f"{': ' + what if what else ''})", hint="bring this part (any medium, any order)"))
    return findings


# ---- verifying a part set or a single part ----------------------------------------------------------


@dataclass(frozen=True)
class VerifiedParts:
    places: tuple[Path, ...]
    kind: Kind
    bundle: BundleRef
    base: BundleRef | None
    parts_present: tuple[str, ...]
    parts_total: int
    signers: tuple[str, ...]
    bytes_hashed: int
    whole_set: bool

    def to_dict(self) -> dict[str, Any]:
        return {"parts": [str(p) for p in self.places], "kind": self.kind, "name": self.bundle.name,
                "version": self.bundle.version, "manifest_sha256": self.bundle.manifest_sha256,
                "base": self.base.model_dump() if self.base else None, "present": list(self.parts_present),
                "total": self.parts_total, "complete": self.whole_set, "signers": list(self.signers),
                "bytes_hashed": self.bytes_hashed}

    def summary(self) -> str:
        what = f"{self.bundle.name} v{self.bundle.version}"
        if self.base is not None:
            what += f", a delta from v{self.base.version} (the rest comes from that base)"
        scope = (f"all {self.parts_total} part(s)" if self.whole_set else
                 f"{len(self.parts_present)} of {self.parts_total} part(s): {', '.join(self.parts_present)}")
        return f"{scope} of {what}; every piece matches the signed manifest, {len(self.signers)} " \
               f"trusted signature(s)"


def verify_parts(places: Sequence[Path], policy: TrustPolicy | None, *, whole_set: bool = True,
                 workers: int | None = None, progress: Progress | None = None,
                 on_total: Any = None) -> VerifiedParts:
    """Verify every part found (signatures, framing, every piece); with whole_set, also that the set
    is complete and holds nothing else. Raises CheckFailed naming each missing, extra or damaged part."""
    ps = collect_parts(places, policy)
    pieces = ps.pieces
    work = [Piece(part.path, at, pieces[(path, shard)].length, (f"{i}\0{path}", shard))
            for i, part in enumerate(ps.parts) for path, shard, at in part.header.entry.pieces]
    run = HashRun(work, workers=workers, progress=progress or (lambda _n: None))
    if on_total:
        on_total(run.total)
    digests = run.results()
    findings = list(ps.findings)
    available: set[PieceKey] = set()
    for i, part in enumerate(ps.parts):
        bad = []
        for path, shard, at in part.header.entry.pieces:
            got = digests[(f"{i}\0{path}", shard)]
            if got.sha256 == pieces[(path, shard)].sha256:
                available.add((path, shard))
            else:
                bad.append(f"{pieces[(path, shard)].label} at offset {at}: " +
                           (f"unreadable ({got.error})" if got.sha256 is None else "SHA-256 differs"))
        if bad:
            findings.append(Finding("parts.damaged", str(part.path), f"{part.label}: " + "; ".join(bad[:3]),
                                    hint="copy this part again from its medium"))
    if whole_set:
        findings += missing_findings(ps, available)
    if findings:
        raise CheckFailed(f"part verification failed with {len(findings)} finding(s)", code="parts.verify_failed",
                          findings=findings, hint="see each finding: missing parts are named, damaged ones "
                                                  "must be copied again, others removed")
    hashed = sum(d.read for d in digests.values())
    return VerifiedParts(tuple(places), ps.kind, ps.bundle, ps.base,
                         tuple(sorted({p.path.name for p in ps.parts})), len(ps.layout),
                         ps.checked.signers, hashed, whole_set)


# ---- joining --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    path: Path
    bundle: BundleRef
    report: TransferReport
    signers: tuple[str, ...]
    notes: tuple[Finding, ...]  # extra or damaged files that were not needed

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "name": self.bundle.name, "version": self.bundle.version,
                "manifest_sha256": self.bundle.manifest_sha256, "bytes_copied": self.report.copied_bytes,
                "bytes_resumed": self.report.reused_bytes,
                **({"journal_reset": self.report.journal_reset} if self.report.journal_reset else {}),
                "signers": list(self.signers),
                "signatures": "checked" if self.signers else "not checked (no --trust)",
                "ignored": [f.to_dict() for f in self.notes]}


def require_trusted(ps: PartSet, *, verb: str) -> None:
    bad = list(ps.checked.findings)
    if bad:
        raise CheckFailed(f"the parts' signed manifest does not pass ({len(bad)} finding(s))",
                          code=f"{verb}.untrusted", findings=bad, hint="nothing was written")


def part_failures(failures: list[Failure]) -> list[Finding]:
    """A piece no source could supply intact, named by the file that should have held it."""
    return [Finding("parts.damaged", str(f.job.sources[0].path) if f.job.sources else f.job.label,
                    f"{f.job.label}: {failure_reasons(f)}",
                    hint="copy the part named again, then run the same command: the rest is kept")
            for f in failures]


def join_parts(places: Sequence[Path], out: Path, *, policy: TrustPolicy | None = None,
               opts: TransferOptions | None = None) -> Joined:
    """Join parts found in `places` (any order, duplicates fine) into the bundle directory `out`."""
    check_not_inside(out, places, code="join.out_inside_source")
    ps = collect_parts(places, policy)
    if ps.kind == "delta":
        raise UsageError("these are the parts of a delta, not of a whole bundle", code="join.is_delta",
                         hint=f"rebuild with 'gptossctl bundle apply DELTA --base BUNDLE --out NEW' "
                              f"(base: {ps.base.describe() if ps.base else '?'})")
    require_trusted(ps, verb="join")
    sources = ps.sources()
    missing = missing_findings(ps, set(sources))
    if missing or any(p.key not in sources for p in ps.needed()):
        raise CheckFailed(f"{len(missing)} part(s) missing: the bundle cannot be joined yet",
                          code="join.missing_parts", findings=missing + [f for f in ps.findings
                                                                          if f.code == "parts.damaged"],
                          hint="bring the parts named (any order, any medium) and run the same command again")
    done = assemble_bundle(out, ps.envelope_json, ps.checked.manifest, sources, opts,
                           describe=part_failures, verb="join")
    return Joined(done.path, ps.bundle, done.report, ps.checked.signers, tuple(ps.findings))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
