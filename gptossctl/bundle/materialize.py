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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.bundle.delta import apply_delta, needed_base
from gptossctl.bundle.hashing import Progress
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.partfile import MAGIC, DamagedPart, NotAPart, read_part
from gptossctl.bundle.parts import collect_parts, join_parts, verify_parts
from gptossctl.bundle.sign import Inspection, PartsSeen, inspect_bundle, signer_names
from gptossctl.bundle.transfer import TransferOptions
from gptossctl.bundle.verify import TrustPolicy, VerifiedBundle, verify_bundle
from gptossctl.errors import CheckFailed, Finding, UsageError

if TYPE_CHECKING:
    # parts, delta and partfile load pydantic (a third of a second): verifying a bundle directory
    # starts hashing before that, so they are imported where a part set is actually handled.
    from gptossctl.bundle.partfile import BundleRef
    from gptossctl.bundle.parts import VerifiedParts

__all__ = ["delta_base", "inspect_source", "is_bundle", "materialize", "verify_source"]


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


def inspect_source(path: Path, *, name_of: Callable[[str], str | None] = lambda _k: None,
                   now: datetime | None = None) -> Inspection:
    """`bundle inspect PATH`: what a bundle, a folder of parts, one part or a delta holds, read from the signed
    manifest and the part headers only. Nothing is hashed and no signature is checked (`name_of` only names the
    key ids a trust root knows). A damaged part is a finding (and the set's exit 1), never a crash."""
    if is_bundle(path) or (path.is_dir() and not _has_parts(path)):
        return inspect_bundle(path, now=now, name_of=name_of)
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path} does not exist", code="bundle.not_found",
                         hint="give a bundle directory, a directory of parts, or one .part file")
    if not path.is_dir():
        try:
            read_part(path)
        except NotAPart as exc:
            raise UsageError(f"{path} is not a bundle directory and not a gptossctl part ({exc})",
                             code="bundle.not_a_bundle", hint="give a bundle directory (it holds manifest.dsse.json), "
                             "a directory of parts, or one .part file") from None
        except DamagedPart as exc:
            raise CheckFailed(f"{path} is a damaged gptossctl part: {exc}", code="parts.damaged",
                              findings=[Finding("parts.damaged", str(path), str(exc))],
                              hint="copy this part again from its medium, or bring another copy") from None
    ps = collect_parts([path], None)
    here = {p.header.part: p for p in ps.parts if p.header.layout == ps.layout}
    present = tuple({"part": n, "name": here[n].path.name, "size": here[n].size} for n in sorted(here))
    missing = tuple({"part": i, "name": e.name, "size": e.size} for i, e in enumerate(ps.layout, 1) if i not in here)
    seen = PartsSeen(ps.kind, ps.base.model_dump() if ps.base else None, len(ps.layout), present, missing,
                     sum(p.length for p in ps.needed()))
    source = "delta" if ps.kind == "delta" else ("parts" if path.is_dir() else "part")
    return Inspection(path, ps.checked.manifest, signer_names(ps.envelope.signatures, name_of),
                      now or datetime.now(UTC), source=source, parts=seen,
                      findings=tuple(f for f in ps.findings if f.code.startswith("parts.")))


def _has_parts(directory: Path) -> bool:

    for entry in sorted(directory.iterdir()):
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb") as f:
                if f.read(len(MAGIC)) == MAGIC:
                    return True
    return False
