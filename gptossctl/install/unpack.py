"""Unpack a verified bundle into releases/<version>, re-checking every hash as the bytes land. A release
directory exists only once it is complete (built as .<version>.partial, then renamed), so an interrupted
unpack never looks installed, and running it again converges.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gptossctl.bundle.hashing import copy_and_hash
from gptossctl.bundle.layout import ENVELOPE, MANIFEST, PAYLOAD, SUMS
from gptossctl.bundle.manifest import sha256sums_text
from gptossctl.bundle.verify import VerifiedBundle
from gptossctl.errors import CheckFailed, Finding
from gptossctl.install.layout import Layout
from gptossctl.install.releases import prune_advice

UNPACK_MARGIN = 64 << 20  # room kept beyond the payload: the environment, rendered files, the record


def unpack_release(bundle: VerifiedBundle, layout: Layout, *, margin: int = UNPACK_MARGIN,
                   finish: Callable[[Path], None] | None = None) -> Path:
    """Copy the verified bundle into its release directory; return it. Idempotent. `margin` is the
    free space kept beyond the payload's size. `finish(tmp)` completes the release (environment,
    rendered files) before it is renamed into place, so a release directory is always whole."""
    m = bundle.manifest
    dest = layout.release(m.version)
    if dest.is_dir():
        return dest  # renamed into place only when complete: an earlier run finished
    layout.releases.mkdir(parents=True, exist_ok=True)
    tmp = layout.releases / f".{m.version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted run are never trusted
    free = shutil.disk_usage(layout.releases).free
    if m.total_size + margin > free:
        raise CheckFailed(f"not enough disk at {layout.releases}: {m.total_size / 2**30:.2f} GiB needed, "
                          f"{free / 2**30:.2f} GiB free", code="install.insufficient_disk",
                          hint=prune_advice(layout, m.total_size + margin - free)
                          or "free space, or remove old releases once the current one is healthy")
    try:
        # The signed files come from what verification held in memory, never from the bundle directory again.
        assert bundle.envelope is not None, "unpack takes a bundle that verify_bundle returned"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in ((MANIFEST, bundle.envelope.payload), (ENVELOPE, bundle.envelope.to_json()),
                           (SUMS, sha256sums_text(m.files))):
            (tmp / name).write_bytes(data)
        findings = []
        for f in m.files:
            src, dst = bundle.root / PAYLOAD / f.path, tmp / PAYLOAD / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            # Re-check as the bytes land: the bundle could change between verify and unpack.
            got = copy_and_hash(src, dst, shard_size=m.shard_size)
            if got.size != f.size or got.sha256 != f.sha256 or (f.shards and got.shards != f.shards):
                findings.append(Finding("bundle.digest_mismatch", f"{PAYLOAD}/{f.path}",
                                        "changed between verification and unpack"))
        if findings:
            raise CheckFailed("the bundle changed while it was being installed", code="install.bundle_changed",
                              findings=findings, hint="protect the bundle from writers and install again")
        _readable(tmp)
        if finish is not None:
            finish(tmp)
        os.rename(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise CheckFailed(f"disk full while unpacking into {layout.releases}", code="install.disk_full",
                              hint="free space and run the install again; nothing was activated") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _readable(tree: Path) -> None:
    """Bundle files are world-readable and root-owned whatever the installer's umask: the service user
    reads them, nobody but root writes them."""
    for d, _dirs, files in os.walk(tree):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
