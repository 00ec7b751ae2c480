"""One door for whatever crossed the gap: a bundle directory, a part set, or a delta and its base.

materialize: a bundle directory is returned as it is (install verifies it next, as always); parts
    are joined, and a delta is applied to its base, into `scratch` (resumable, each piece verified
    against the signed manifest as it lands, signatures checked against the policy first).
verify_source: what `bundle verify` runs: a bundle directory is verified as ever; a part set is
    verified as a set (missing, extra, damaged parts named); a single part file on its own; a delta
    as far as it goes (signatures and every piece it carries; the rest is in its base).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.bundle.delta import apply_delta, needed_base
from gptossctl.bundle.hashing import Progress
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.partfile import MAGIC
from gptossctl.bundle.parts import collect_parts, join_parts, verify_parts
from gptossctl.bundle.transfer import TransferOptions
from gptossctl.bundle.verify import TrustPolicy, VerifiedBundle, verify_bundle
from gptossctl.errors import UsageError

if TYPE_CHECKING:
    # parts, delta and partfile load pydantic (a third of a second): verifying a bundle directory
    # starts hashing before that, so they are imported where a part set is actually handled.
    from gptossctl.bundle.partfile import BundleRef
    from gptossctl.bundle.parts import VerifiedParts

__all__ = ["delta_base", "is_bundle", "materialize", "verify_source"]


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / ENVELOPE).exists()


def materialize(
    source: Path,
    *,
    base: Path | None,
    scratch: Path,
    policy: TrustPolicy | None,  # None: integrity only (the install verifies the rebuilt bundle against its root)
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Path:
    """A complete bundle directory for `source`: itself if it is one, else joined or applied in scratch.

    A delta needs `base` (the installed release or a bundle): without it, or with another one, this
    raises naming the base the delta was made against. Rerun after an interruption to resume.
    """
    if is_bundle(source):
        return source

    opts = TransferOptions(workers=workers, progress=progress, on_total=on_total)
    ps = collect_parts([source], policy)
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"{ps.bundle.name}-{ps.bundle.version}-{ps.bundle.manifest_sha256[:12]}"
    if is_bundle(out) and (out / ENVELOPE).read_bytes() == ps.envelope_json:
        return out  # an earlier run finished it (it is verified again by whoever installs it)
    if ps.kind == "split":
        return join_parts([source], out, policy=policy, opts=opts).path
    assert ps.base is not None
    if base is None:
        raise UsageError(f"{source} is a delta: it rebuilds {ps.bundle.name} v{ps.bundle.version} from "
                         f"{ps.base.describe()}, which is not given", code="delta.base_missing",
                         hint=f"pass the installed release or the bundle of {ps.base.name} v{ps.base.version} as "
                              "the base, or install the full bundle")
    return apply_delta([source], base, out, policy=policy, opts=opts).path


def delta_base(source: Path) -> BundleRef | None:
    """The base a delta at `source` needs, so an installer can look for it among its releases."""

    return needed_base([source])


def verify_source(
    path: Path,
    policy: TrustPolicy,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> VerifiedBundle | VerifiedParts:
    """`bundle verify PATH`: a bundle, a directory of parts (whole set), one part, or a delta."""
    if is_bundle(path) or (path.is_dir() and not _has_parts(path)):
        return verify_bundle(path, policy, workers=workers, progress=progress, on_total=on_total)
    if not path.exists():
        raise UsageError(f"{path} does not exist", code="bundle.not_found",
                         hint="give a bundle directory, a directory of parts, or one .part file")

    return verify_parts([path], policy, whole_set=path.is_dir(), workers=workers, progress=progress,
                        on_total=on_total)


def _has_parts(directory: Path) -> bool:

    for entry in sorted(directory.iterdir()):
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb") as f:
                if f.read(len(MAGIC)) == MAGIC:
                    return True
    return False
