"""Co-signing and inspecting finished bundles."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gptossctl.bundle.dsse import Signature
from gptossctl.bundle.keys import SigningKey
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.manifest import Manifest, parse_manifest
from gptossctl.bundle.verify import read_envelope, verify_bundle
from gptossctl.errors import UsageError
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
class Inspection:
    path: Path
    manifest: Manifest = field(repr=False)
    signers: tuple[str, ...]
    now: datetime

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "bundle": str(self.path),
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
            "verified": False,  # inspect never vouches: run 'bundle verify' for that
        }


def inspect_bundle(root: Path, *, now: datetime | None = None,
                   name_of: Callable[[str], str | None] = lambda _k: None) -> Inspection:
    """What the envelope claims, unverified. With `name_of` (a trust root's names) each signer key id is shown
    beside the name the root gives it: a name says whose key it is, not that the signature is valid."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", code="bundle.not_found")
    envelope = read_envelope(root)
    manifest = parse_manifest(envelope.payload)
    signers = tuple(f"{name} ({s.keyid[:16]})" if (name := name_of(s.keyid)) else s.keyid for s in envelope.signatures)
    return Inspection(root, manifest, signers, now or datetime.now(UTC))
