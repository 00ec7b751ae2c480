"""Names of the files at the top of a bundle directory (see docs/bundle-format.md)."""

from __future__ import annotations

import posixpath

MANIFEST = "manifest.json"  # byte-identical readable copy of the signed payload
ENVELOPE = "manifest.dsse.json"  # DSSE envelope: the payload and its signatures
SUMS = "SHA256SUMS"  # `sha256sum -c` list of the payload; its digest is in the manifest
PAYLOAD = "payload"
TOP_LEVEL = frozenset({MANIFEST, ENVELOPE, SUMS, PAYLOAD})
PARTIAL_SUFFIX = ".partial"
JOURNAL = ".gptossctl-pack.jsonl"  # inside DIR.partial only; never in a finished bundle


def unsafe_path_reason(path: str) -> str | None:
    """Why a manifest path must not be opened, or None. Paths are POSIX, relative, normalised."""
    if "\x00" in path or "\\" in path:
        return "contains a NUL or backslash"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' component"
    if posixpath.normpath(path) != path:
        return "is not normalised"
    if any(ord(ch) < 0x20 for ch in path):
        return "contains control characters"
    return None
