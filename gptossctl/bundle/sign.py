"""Co-signing and inspecting finished bundles."""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptossctl.bundle.dsse import Signature
from gptossctl.bundle.keys import SigningKey
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.manifest import Manifest, parse_manifest
from gptossctl.bundle.verify import read_envelope, verify_bundle
from gptossctl.errors import Finding, UsageError
from gptossctl.fsutil import atomic_write


@dataclass(frozen=True)
class SignResult:
    path: Path
    keyid: str
    signers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "added": self.keyid, "signers": list(self.signers)}


def cosign_bundle(root: Path, key: SigningKey, *, check_files: bool = True) -> SignResult:
    """Add key's signature. The files are re-hashed first: a signer vouches for what is there."""
    if check_files:
        verify_bundle(root, None)
    envelope = read_envelope(root)
    parse_manifest(envelope.payload)
    if any(s.keyid == key.keyid for s in envelope.signatures):
        raise UsageError(f"key {key.keyid[:16]} has already signed this bundle", code="sign.already_signed")

    signed = envelope.with_signature(Signature(key.keyid, key.sign(envelope.signed_message())))
    # Atomic, and the temporary file removed on every error (a full disk, Ctrl-C): a failed co-sign leaves the
    # bundle byte-identical, never a stray file that 'bundle verify' would call bundle.extra_file.
    atomic_write(root / ENVELOPE, signed.to_json(), stat.S_IMODE((root / ENVELOPE).stat().st_mode))
    return SignResult(root, key.keyid, tuple(s.keyid for s in signed.signatures))


@dataclass(frozen=True)
class PartsSeen:
    """What a folder of parts, one part or a delta holds, read from the part headers alone."""

    kind: str  # split | delta
    base: dict[str, Any] | None  # a delta's base: name, version, manifest_sha256
    total: int  # parts in the layout
    present: tuple[dict[str, Any], ...]  # {"part", "name", "size"} of each part found intact in its framing
    missing: tuple[dict[str, Any], ...]  # the layout's parts not found here
    carried_bytes: int  # the payload bytes the parts carry (a delta: the rest comes from its base)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base, "total": self.total, "present": list(self.present),
                "missing": list(self.missing), "complete": not self.missing, "carried_bytes": self.carried_bytes}


@dataclass(frozen=True)
class Inspection:
    path: Path
    manifest: Manifest = field(repr=False)
    signers: tuple[str, ...]
    now: datetime
    source: str = "bundle"  # bundle | parts (a folder) | part (one file) | delta
    parts: PartsSeen | None = None
    findings: tuple[Finding, ...] = ()  # damaged, extra or foreign files beside the parts

    @property
    def damaged(self) -> bool:
        return any(f.code in ("parts.damaged", "parts.header_mismatch") for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        sizes: dict[str, dict[str, int]] = {}
        for f in m.files:
            c = sizes.setdefault(f.component, {"files": 0, "bytes": 0})
            c["files"] += 1
            c["bytes"] += f.size
        return {
            "bundle": str(self.path),
            "source": self.source,
            "name": m.name,
            "version": m.version,
            "created": m.created.isoformat(),
            "expires": m.expires.isoformat(),
            "expired": self.now > m.expires,
            "min_gptossctl_version": m.min_gptossctl_version,
            "files": len(m.files),
            "bytes": m.total_size,
            "signers": list(self.signers),
            "components": m.components,
            "sizes": sizes,
            "contents": [{"path": f.path, "size": f.size, "component": f.component} for f in m.files],
            "parts": self.parts.to_dict() if self.parts else None,
            "verified": False,  # inspect never vouches: run 'bundle verify' for that
            "hashed": 0,  # no byte was hashed: headers and the manifest only
        }


def inspect_bundle(root: Path, *, now: datetime | None = None,
                   name_of: Callable[[str], str | None] = lambda _k: None) -> Inspection:
    """What the envelope claims, unverified. With `name_of` (a trust root's names) each signer key id is shown
    beside the name the root gives it: a name says whose key it is, not that the signature is valid."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", code="bundle.not_found")
    envelope = read_envelope(root)
    manifest = parse_manifest(envelope.payload)
    return Inspection(root, manifest, signer_names(envelope.signatures, name_of), now or datetime.now(UTC))


def signer_names(signatures: Sequence[Signature], name_of: Callable[[str], str | None]) -> tuple[str, ...]:
    return tuple(f"{name} ({s.keyid[:16]})" if (name := name_of(s.keyid)) else s.keyid for s in signatures)
