"""The part file (`gptossctl.part/1`) and the part index (`gptossctl.parts/1`) on disk.

A part is self-describing, so a receiver behind a data diode needs nothing else:

    GPTOSSCTL-PART/1\\n            magic line
    0000000000012345\\n            length of the header, 16 decimal digits
    {header JSON}                  the bundle's signed DSSE envelope, this part's number, the whole layout
    zero bytes up to `body`        (a multiple of 4096: pieces start page-aligned)
    piece, piece, ...              raw bytes of manifest pieces, back to back, in layout order

Every byte is accounted for: the header is parsed strictly, the padding must be zero, and each piece
is hashed against the digest the signers signed for it. The header itself is not signed and needs no
signature: whatever it claims is checked against the signed manifest it carries. Its name and version are
hints at most: the bundle a part set is reported as, and every path made for it, come from the signed
manifest; a header that disagrees with it is a finding (header_problems), never a path.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from gptossctl.bundle.dsse import Envelope, parse_envelope
from gptossctl.bundle.pieces import PieceKey, PieceRef, manifest_digest
from gptossctl.errors import CheckFailed

MAGIC = b"GPTOSSCTL-PART/1\n"
PART_SCHEMA: Literal["gptossctl.part/1"] = "gptossctl.part/1"
INDEX_SCHEMA: Literal["gptossctl.parts/1"] = "gptossctl.parts/1"
INDEX_NAME = "parts.json"
ALIGN = 4096
_LEN_DIGITS = 16
PREFIX_LEN = len(MAGIC) + _LEN_DIGITS + 1
MAX_HEADER = 64 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_BUNDLE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # as the manifest's name (manifest._NAME)


def _hex64(v: str) -> str:
    if not _HEX64.match(v):
        raise ValueError("must be 64 lowercase hex digits")
    return v


def _file_name(v: str) -> str:
    if not _FILE_NAME.match(v):
        raise ValueError("must be a plain file name (letters, digits, '.', '_', '-')")
    return v


def _bundle_name(v: str) -> str:
    if not _BUNDLE_NAME.match(v):
        raise ValueError("must be a bundle name (lowercase letters, digits, '.', '_', '-')")
    return v


Hex64 = Annotated[str, AfterValidator(_hex64)]
FileName = Annotated[str, AfterValidator(_file_name)]
Kind = Literal["split", "delta"]


class BundleRef(BaseModel):
    """A bundle named by its signed manifest's digest (and, for people, its name and version)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1)
    manifest_sha256: Hex64

    def describe(self) -> str:
        return f"{self.name} v{self.version} (manifest sha256 {self.manifest_sha256})"


class PartEntry(BaseModel):
    """One part of a layout: its file name, size, and pieces as (path, shard, offset in the part)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: FileName
    size: int = Field(ge=0)
    pieces: tuple[tuple[str, int, int], ...]


class PartHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    schema_: Literal["gptossctl.part/1"] = Field(alias="schema")
    kind: Kind
    bundle: BundleRef
    # A delta: the bundle whose pieces it does not carry. Never signed (the new bundle's manifest does not
    # name it): its digest is matched against the base given, its name only says which base to bring.
    base: BundleRef | None = None
    part: int = Field(ge=1)  # 1-based, as people count
    body: int = Field(ge=ALIGN)
    envelope: str  # base64 of the bundle's manifest.dsse.json, byte for byte
    layout: tuple[PartEntry, ...] = Field(min_length=1)

    @field_validator("base")
    @classmethod
    def _base_name(cls, v: BundleRef | None) -> BundleRef | None:
        if v is not None:
            _bundle_name(v.name)
        return v

    @property
    def entry(self) -> PartEntry:
        return self.layout[self.part - 1]

    @property
    def parts(self) -> int:
        return len(self.layout)


class PartIndex(BaseModel):
    """parts.json next to the parts: the layout for people and scripts. Parts do not need it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    schema_: Literal["gptossctl.parts/1"] = Field(alias="schema")
    kind: Kind
    bundle: BundleRef
    base: BundleRef | None = None
    part_size: int = Field(ge=1)
    body: int
    layout: tuple[PartEntry, ...]


def _dump(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(mode="json", by_alias=True), separators=(",", ":")).encode()


def part_name(ref: BundleRef, base: BundleRef | None, i: int, n: int) -> str:
    stem = f"{ref.name}-{ref.version}" if base is None else f"{ref.name}-{base.version}-to-{ref.version}"
    return f"{stem}.{i:03d}-of-{n:03d}.part"


@dataclass(frozen=True)
class RenderedLayout:
    body: int
    layout: tuple[PartEntry, ...]
    headers: tuple[bytes, ...]  # prefix + header JSON of each part, padding not included


def render_layout(kind: Kind, ref: BundleRef, base: BundleRef | None, envelope_json: bytes,
                  assignment: list[list[PieceRef]]) -> RenderedLayout:
    """Headers for a planned assignment of pieces to parts. `body` grows until every header fits."""
    n = len(assignment)
    names = [part_name(ref, base, i + 1, n) for i in range(n)]
    env = base64.b64encode(envelope_json).decode()
    body = ALIGN
    while True:
        layout = tuple(_entry(names[i], body, pieces) for i, pieces in enumerate(assignment))
        headers = tuple(_prefixed(_dump(PartHeader(schema_=PART_SCHEMA, kind=kind, bundle=ref, base=base, part=i + 1,
                                                  body=body, envelope=env, layout=layout))) for i in range(n))
        need = max(len(h) for h in headers)
        if need <= body:
            return RenderedLayout(body, layout, headers)
        body = -(-need // ALIGN) * ALIGN


def _entry(name: str, body: int, pieces: list[PieceRef]) -> PartEntry:
    at = body
    refs = []
    for p in pieces:
        refs.append((p.path, p.shard, at))
        at += p.length
    return PartEntry(name=name, size=at, pieces=tuple(refs))


def _prefixed(header: bytes) -> bytes:
    return MAGIC + b"%0*d\n" % (_LEN_DIGITS, len(header)) + header


def index_bytes(kind: Kind, ref: BundleRef, base: BundleRef | None, part_size: int, rendered: RenderedLayout) -> bytes:
    idx = PartIndex(schema_=INDEX_SCHEMA, kind=kind, bundle=ref, base=base, part_size=part_size,
                    body=rendered.body, layout=rendered.layout)
    return (json.dumps(idx.model_dump(mode="json", by_alias=True), indent=1) + "\n").encode()


class NotAPart(Exception):
    """The file does not start with the part magic: some other file."""


class DamagedPart(Exception):
    """The file is a part whose header or framing is damaged."""


@dataclass(frozen=True)
class PartFile:
    """A part whose framing was checked: magic, strict header, envelope, padding, size."""

    path: Path
    header: PartHeader
    envelope: Envelope
    envelope_json: bytes
    header_bytes: bytes  # prefix + header JSON: copied and compared byte for byte
    size: int

    @property
    def label(self) -> str:
        return f"part {self.header.part} of {self.header.parts} ({self.path.name})"


def read_part(path: Path) -> PartFile:
    """Read and check a part's framing; raise NotAPart or DamagedPart (never anything else)."""
    if path.is_symlink():
        raise NotAPart("a symbolic link: refused, never followed")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO never blocks
    except OSError as exc:
        raise DamagedPart(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAPart("not a regular file")
        prefix = os.pread(fd, PREFIX_LEN, 0)
        if not prefix.startswith(MAGIC):
            raise NotAPart("does not start with the part magic")
        length = _header_length(prefix)
        if PREFIX_LEN + length > min(st.st_size, MAX_HEADER):
            raise DamagedPart(f"header length {length} runs past the end of the file")
        raw = os.pread(fd, length, PREFIX_LEN)
        header = _parse_header(raw)
        if header.body > st.st_size or header.body < PREFIX_LEN + length:
            raise DamagedPart(f"body offset {header.body} is outside the file or inside the header")
        if os.pread(fd, header.body - PREFIX_LEN - length, PREFIX_LEN + length).strip(b"\0"):
            raise DamagedPart("the padding after the header is not zero")
    except OSError as exc:
        raise DamagedPart(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    env_json, envelope = _envelope(header)
    if (header.kind == "delta") != (header.base is not None):
        raise DamagedPart(f"a {header.kind} part {'without' if header.base is None else 'with'} a base")
    if header.part > header.parts:
        raise DamagedPart(f"part number {header.part} is beyond the {header.parts} parts of its layout")
    if st.st_size != header.entry.size:
        kind = "truncated" if st.st_size < header.entry.size else "longer than its header says"
        raise DamagedPart(f"{kind}: {st.st_size} bytes, header says {header.entry.size}")
    return PartFile(path, header, envelope, env_json, prefix + raw, st.st_size)


def _header_length(prefix: bytes) -> int:
    digits = prefix[len(MAGIC): len(MAGIC) + _LEN_DIGITS]
    if len(prefix) < PREFIX_LEN or not digits.isdigit() or prefix[-1:] != b"\n":
        raise DamagedPart("the header length line is damaged")
    return int(digits)


def _parse_header(raw: bytes) -> PartHeader:
    try:
        return PartHeader.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise DamagedPart(f"header is malformed: {where}: {first['msg']}") from None
    except (RecursionError, ValueError):
        raise DamagedPart("header is not JSON") from None


def _envelope(header: PartHeader) -> tuple[bytes, Envelope]:
    try:
        env_json = base64.b64decode(header.envelope, validate=True)
        envelope = parse_envelope(env_json)
    except (binascii.Error, ValueError):
        raise DamagedPart("the envelope in the header is not base64") from None
    except CheckFailed as exc:
        raise DamagedPart(f"the envelope in the header is malformed: {exc.message}") from None
    if manifest_digest(envelope) != header.bundle.manifest_sha256:
        raise DamagedPart("the envelope in the header is not the manifest the header names")
    return env_json, envelope


def header_problems(header: PartHeader, signed: BundleRef) -> list[str]:
    """What a header claims that the signed manifest it carries does not say (empty: nothing): its name,
    version and manifest digest, and the name of every part of its layout (derived from the signed name)."""
    problems: list[str] = []
    claimed = header.bundle
    if (claimed.name, claimed.version, claimed.manifest_sha256) != (signed.name, signed.version,
                                                                     signed.manifest_sha256):
        problems.append(f"the header names {claimed.name!r} v{claimed.version} (manifest sha256 "
                        f"{claimed.manifest_sha256[:12]}), the signed manifest it carries is {signed.name!r} "
                        f"v{signed.version} (manifest sha256 {signed.manifest_sha256[:12]})")
    n = len(header.layout)
    for i, entry in enumerate(header.layout, 1):
        want = part_name(signed, header.base, i, n)
        if entry.name != want:
            problems.append(f"part {i} of the layout is named {entry.name!r}; the signed manifest names it {want!r}")
            break
    return problems


def layout_problems(header: PartHeader, pieces: dict[PieceKey, PieceRef]) -> list[str]:
    """What is wrong with a header's layout against the signed manifest's pieces (empty: nothing).

    Every listed piece must exist, appear once in the whole layout, and follow the previous piece
    without a gap; a split must hold every piece of the manifest.
    """
    problems: list[str] = []
    seen: set[PieceKey] = set()
    for entry in header.layout:
        at = header.body
        for path, shard, offset in entry.pieces:
            ref = pieces.get((path, shard))
            if ref is None:
                problems.append(f"{entry.name} lists {path} shard {shard}, which the manifest does not have")
                return problems
            if (path, shard) in seen:
                problems.append(f"{entry.name} lists {ref.label} a second time")
            seen.add((path, shard))
            if offset != at:
                problems.append(f"{entry.name}: {ref.label} is at {offset}, expected {at}")
            at = offset + ref.length
        if at != entry.size:
            problems.append(f"{entry.name}: pieces end at {at}, the part's size is {entry.size}")
    if header.kind == "split" and len(seen) != len(pieces):
        problems.append(f"the layout holds {len(seen)} of the manifest's {len(pieces)} pieces")
    return problems
