#!/usr/bin/env python3
"""Pull a gptossctl bundle from an HTTP(S) mirror inside the site into DEST, every host in parallel.

Each payload file is hashed while it streams and must match its line in SHA256SUMS; files already
complete and matching are kept, so an interrupted pull resumes file by file. The mirror is not trusted:
SHA256SUMS is bound to the signed manifest, and both are checked (bootstrap-verify.sh, then
`gptossctl bundle verify`) before anything from the bundle runs.
usage: fetch-bundle.py URL DEST      prints {"fetched": N, "kept": M, "bytes": B}
Runs on the managed host's own Python (3.6 or later): standard library only.
"""

import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request
from typing import Optional

CHUNK = 1 << 20


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# Optional, not "str | None": the host may run Python 3.6 (RHEL 8), which cannot evaluate the latter.
def fetch(url: str, dest: str, want: Optional[str] = None) -> int:  # noqa: UP045
    part = dest + ".part"
    h, n = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=120) as r, open(part, "wb") as f:
        for block in iter(lambda: r.read(CHUNK), b""):
            h.update(block)
            f.write(block)
            n += len(block)
    if want is not None and h.hexdigest() != want:
        os.unlink(part)
        sys.exit(f"FAIL: {url} does not match SHA256SUMS (got {h.hexdigest()})")
    os.replace(part, dest)
    return n


def main() -> None:
    base, dest = sys.argv[1].rstrip("/") + "/", sys.argv[2]
    os.makedirs(dest, mode=0o755, exist_ok=True)
    for name in ("manifest.json", "manifest.dsse.json", "SHA256SUMS"):
        fetch(base + name, os.path.join(dest, name))
    fetched = kept = size = 0
    with open(os.path.join(dest, "SHA256SUMS")) as sums:
        lines = [line.rstrip("\n") for line in sums if line.strip()]
    for line in lines:
        digest, rel = line.split("  ", 1)
        parts = rel.split("/")
        if parts[0] != "payload" or any(p in ("", ".", "..") for p in parts) or rel.startswith("/"):
            sys.exit(f"FAIL: unsafe path in SHA256SUMS: {rel!r}")
        path = os.path.join(dest, *parts)
        if os.path.isfile(path) and not os.path.islink(path) and sha256(path) == digest:
            kept += 1
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        size += fetch(base + urllib.parse.quote(rel), path, digest)
        fetched += 1
    print(json.dumps({"fetched": fetched, "kept": kept, "bytes": size}))


if __name__ == "__main__":
    main()
