"""Names of the files at the top of a bundle directory (see docs/bundle-format.md)."""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Iterable

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
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in path):
        return "contains control characters"
    if not unicodedata.is_normalized("NFC", path):
        # macOS (HFS+) and some tools store names decomposed: an NFD name is another file there, or the same.
        return "is not in Unicode NFC form (normalise the file name before packing)"
    return None


def path_key(path: str) -> str:
    """The name a path has on the media a bundle travels on and lands on: NFC (HFS+, APFS and some tools
    normalise), case-folded (FAT, exFAT, NTFS and macOS's default are case-insensitive). Two manifest paths
    with one key would be one file there."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def path_collisions(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(path, the earlier path it collides with) for every path whose key another, different path already
    has, as a file or as a directory above a file (`A/x` and `a` collide on a case-insensitive disk).
    Exact duplicates are not collisions: the caller reports them as duplicates."""
    files: dict[str, str] = {}
    dirs: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    ordered = list(paths)
    for p in ordered:
        parts = p.split("/")
        for i in range(1, len(parts)):
            dirs.setdefault(path_key("/".join(parts[:i])), "/".join(parts[:i]))
    for p in ordered:
        key = path_key(p)
        other = files.get(key)
        if other is not None and other != p:
            out.append((p, other))
        files.setdefault(key, p)
        d = dirs.get(key)
        if d is not None and d != p:
            out.append((p, f"{d}/"))
        parts = p.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            d = dirs[path_key(prefix)]
            if d != prefix:
                out.append((p, f"{d}/"))
                break
    return out
