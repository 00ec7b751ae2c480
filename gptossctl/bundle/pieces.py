"""Pieces: the units every carried byte is checked against, and where their bytes can be found.

A piece is one digest the signers signed: a whole file (shard -1) or one `shard_size` slice of a file
that has per-shard digests. Parts, deltas and resumable copies all move pieces, so every byte that
crosses the gap is checked against the signed manifest, piece by piece, as it lands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.bundle.layout import PAYLOAD, unsafe_path_reason

if TYPE_CHECKING:
    from gptossctl.bundle.dsse import Envelope
    from gptossctl.bundle.manifest import Manifest

PieceKey = tuple[str, int]  # (manifest path, shard index or -1 for the whole file)


@dataclass(frozen=True)
class PieceRef:
    """One signed digest of the manifest and the byte range of its file that it covers."""

    path: str
    shard: int
    offset: int
    length: int
    sha256: str

    @property
    def key(self) -> PieceKey:
        return (self.path, self.shard)

    @property
    def label(self) -> str:
        return self.path if self.shard < 0 else f"{self.path} (shard {self.shard})"


@dataclass(frozen=True)
class Source:
    """Where the bytes of a piece can be read: a file and an offset in it, and what it is, for messages."""

    path: Path
    offset: int
    origin: str


def manifest_digest(envelope: Envelope) -> str:
    """The bundle's identity: SHA-256 of the signed manifest (manifest.json), as install records it."""
    return hashlib.sha256(envelope.payload).hexdigest()


def manifest_pieces(manifest: Manifest) -> list[PieceRef]:
    """Every piece of the manifest in manifest order: shards of sharded files, whole small files."""
    out: list[PieceRef] = []
    step = manifest.shard_size
    for f in manifest.files:
        if f.shards:
            out += [PieceRef(f.path, i, i * step, min(step, f.size - i * step), d) for i, d in enumerate(f.shards)]
        else:
            out.append(PieceRef(f.path, -1, 0, f.size, f.sha256))
    return out


def bundle_sources(manifest: Manifest, root: Path, *, origin: str) -> dict[PieceKey, Source]:
    """Each piece's bytes in a bundle (or an installed release) laid out as the manifest says."""
    return {p.key: Source(root / PAYLOAD / p.path, p.offset, f"{origin} {PAYLOAD}/{p.path}")
            for p in manifest_pieces(manifest)}


def base_sources(new: Manifest, base: Manifest, base_root: Path) -> dict[PieceKey, Source]:
    """Pieces of `new` whose bytes the base already holds, found by digest, wherever they sit there.

    A piece matches a base piece of the same SHA-256 and length (any path, any shard), or lies inside
    a base file whose whole digest and size equal the new file's (so a new shard size still reuses it).
    """
    by_digest: dict[tuple[str, int], Source] = {}
    safe = [f for f in base.files if unsafe_path_reason(f.path) is None]  # never read outside the base
    base = base.model_copy(update={"files": tuple(safe)})
    for p in manifest_pieces(base):
        src = Source(base_root / PAYLOAD / p.path, p.offset, f"base {PAYLOAD}/{p.path}")
        by_digest.setdefault((p.sha256, p.length), src)
    whole: dict[tuple[str, int], str] = {}
    for f in base.files:
        whole.setdefault((f.sha256, f.size), f.path)
    sizes = {f.path: (f.sha256, f.size) for f in new.files}
    found: dict[PieceKey, Source] = {}
    for p in manifest_pieces(new):
        hit = by_digest.get((p.sha256, p.length))
        if hit is None and sizes[p.path] in whole:
            path = whole[sizes[p.path]]
            hit = Source(base_root / PAYLOAD / path, p.offset, f"base {PAYLOAD}/{path}")
        if hit is not None:
            found[p.key] = hit
    return found
