"""Signed deltas: carry only the pieces the far side does not already hold.

A delta is a part set (`kind: delta`) of the NEW bundle that holds only the pieces whose digest is
not in the OLD bundle, and names OLD by its signed manifest's SHA-256 (`base`). It carries NEW's
signed envelope, so everything it holds, and everything rebuilt from the base, is checked against
what NEW's signers signed; the delta needs no key of its own and no new signature.

make:  OLD's and NEW's envelopes (no payload byte of OLD is read) -> NEW's pieces minus those whose
       SHA-256 and length OLD holds (any path, any shard; a whole file whose digest is unchanged) ->
       parts, each piece copied from NEW and verified as it lands (parts.write_parts).
apply: collect the delta parts -> the base must be the one named (refused otherwise, naming it) ->
       every piece from the parts or from the base, found by digest -> assemble NEW, each piece
       verified against NEW's signed digest as it lands -> rename. Resumable like every copy here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptossctl.bundle.assemble import assemble_bundle
from gptossctl.bundle.layout import ENVELOPE
from gptossctl.bundle.manifest import parse_manifest
from gptossctl.bundle.partfile import BundleRef
from gptossctl.bundle.parts import (
    FAT32_MAX,
    Joined,
    PartsWritten,
    collect_parts,
    missing_findings,
    part_failures,
    require_trusted,
    write_parts,
)
from gptossctl.bundle.pieces import (
    PieceKey,
    Source,
    base_sources,
    bundle_sources,
    manifest_digest,
    manifest_pieces,
)
from gptossctl.bundle.transfer import TransferOptions
from gptossctl.bundle.verify import TrustPolicy, check_envelope, read_envelope
from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.fsutil import check_not_inside

if TYPE_CHECKING:
    from gptossctl.bundle.dsse import Envelope
    from gptossctl.bundle.manifest import Manifest


@dataclass(frozen=True)
class DeltaMade:
    written: PartsWritten
    shipped_pieces: int
    reused_pieces: int
    reused_bytes: int

    def to_dict(self) -> dict[str, Any]:
        d = self.written.to_dict()
        d.update({"shipped_pieces": self.shipped_pieces, "reused_pieces": self.reused_pieces,
                  "reused_bytes": self.reused_bytes,
                  "ratio": round(self.written.bytes / max(1, self.written.checked.manifest.total_size), 6)})
        return d


def _read_base(base: Path, *, needed: BundleRef | None = None) -> tuple[Envelope, Manifest]:

    if not (base / ENVELOPE).exists():
        want = f": it must be {needed.describe()}" if needed else ""
        raise UsageError(f"{base} is not a bundle or an installed release{want}", code="delta.base_not_found",
                         hint="pass --base with the directory of that bundle (or its installed release)")
    envelope = read_envelope(base)
    return envelope, parse_manifest(envelope.payload)


def make_delta(old: Path, new: Path, out: Path, *, part_size: int = FAT32_MAX, policy: TrustPolicy | None = None,
               opts: TransferOptions | None = None) -> DeltaMade:
    """Write the delta that rebuilds NEW on a host that holds OLD."""
    check_not_inside(out, [old, new], code="delta.out_inside_source")
    old_env, old_manifest = _read_base(old)
    new_env = read_envelope(new)
    checked = check_envelope(new_env, policy)
    if checked.findings:
        raise CheckFailed(f"the new bundle's signed manifest does not pass ({len(checked.findings)} finding(s))",
                          code="delta.untrusted", findings=checked.findings, hint="nothing was written")
    manifest = checked.manifest
    if manifest_digest(old_env) == manifest_digest(new_env):
        raise UsageError("the old and the new bundle are the same bundle", code="delta.same_bundle")
    reusable = base_sources(manifest, old_manifest, old)
    all_pieces = manifest_pieces(manifest)
    ship = [p for p in all_pieces if p.key not in reusable]
    base_ref = BundleRef(name=old_manifest.name, version=old_manifest.version,
                         manifest_sha256=manifest_digest(old_env))
    written = write_parts(out, "delta", checked, new_env, new_env.to_json(), ship,
                          bundle_sources(manifest, new, origin="new bundle"), part_size=part_size, base=base_ref,
                          opts=opts)
    reused = [p for p in all_pieces if p.key in reusable]
    return DeltaMade(written, len(ship), len(reused), sum(p.length for p in reused))


def needed_base(places: Sequence[Path]) -> BundleRef | None:
    """The base a delta needs (None for a bundle or the parts of a whole one); reads headers only."""
    if len(places) == 1 and (places[0] / ENVELOPE).exists():
        return None
    return collect_parts(places, None).base


def apply_delta(places: Sequence[Path], base: Path, out: Path, *, policy: TrustPolicy | None = None,
                opts: TransferOptions | None = None) -> Joined:
    """Rebuild the new bundle at `out` from the delta parts and the base they name."""
    ps = collect_parts(places, policy)
    if ps.kind != "delta" or ps.base is None:
        raise UsageError("these are the parts of a whole bundle, not a delta", code="apply.not_a_delta",
                         hint="join them with 'gptossctl bundle join DIR --out BUNDLE'")
    require_trusted(ps, verb="apply")
    base_env, base_manifest = _read_base(base, needed=ps.base)
    if manifest_digest(base_env) != ps.base.manifest_sha256:
        raise CheckFailed(
            f"this delta rebuilds {ps.bundle.name} v{ps.bundle.version} from {ps.base.describe()}, "
            f"but {base} is {base_manifest.name} v{base_manifest.version} "
            f"(manifest sha256 {manifest_digest(base_env)})", code="apply.wrong_base",
            findings=[Finding("delta.wrong_base", str(base), f"needs base {ps.base.describe()}")],
            hint=f"pass --base with {ps.base.name} v{ps.base.version}, the bundle this delta was made against")
    check_not_inside(out, [*places, base], code="apply.out_inside_source")  # before anything is written
    sources: dict[PieceKey, list[Source]] = ps.sources()
    for key, src in base_sources(ps.checked.manifest, base_manifest, base).items():
        sources.setdefault(key, []).append(src)
    missing = missing_findings(ps, set(sources))
    lacking = [p for p in manifest_pieces(ps.checked.manifest) if p.key not in sources]
    if missing or lacking:
        raise CheckFailed("the delta cannot be applied yet: pieces are missing", code="apply.missing_parts",
                          findings=missing + [Finding("delta.base_lacks_piece", p.label,
                                                      "neither the delta nor the base holds it") for p in lacking
                                              if not missing],
                          hint="bring the delta parts named and run the same command again")
    done = assemble_bundle(out, ps.envelope_json, ps.checked.manifest, sources, opts,
                           describe=part_failures, verb="apply")
    return Joined(done.path, ps.bundle, done.report, ps.checked.signers, tuple(ps.findings))
