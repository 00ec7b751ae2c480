"""`gptossctl bundle ...`: pack, sign, verify, inspect; split, join, copy, delta, apply to carry them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from gptossctl.cli.options import (
    JsonOpt,
    MinVersionOpt,
    RevokedOpt,
    ThresholdOpt,
    TrustOpt,
    TrustRootOpt,
    VersionOpt,
    WorkersOpt,
    trust_policy,
    trust_root_policy,
)
from gptossctl.cli.output import ident, progress_bar, run, stderr, stdout
from gptossctl.errors import UsageError

app = typer.Typer(no_args_is_help=True,
                  help="Pack, sign, verify and inspect signed bundles; carry them as parts, copies and deltas.")


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _signing_keys(paths: list[Path]) -> list[Any]:
    from gptossctl.bundle.keys import load_signing_key

    return [load_signing_key(p) for p in paths]


@app.command("pack")
def pack(
    spec: Path = typer.Argument(..., help="Recipe, e.g. bundles/tiny-demo.yaml."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to create (written as OUT.partial first)."),
    key: list[Path] = typer.Option([], "--key", help="Signing key (.key); repeat for k-of-n."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Model directory (overrides the recipe)."),
    wheelhouse: Path | None = typer.Option(None, "--wheelhouse", help="Wheel directory (overrides the recipe)."),
    version: VersionOpt = None,
    expires_in: str | None = typer.Option(None, "--expires-in", help="Validity such as 90d (default: recipe's)."),
    workers: WorkersOpt = None,
    scratch: Path | None = typer.Option(None, "--scratch", help="Download area (default: OUT.scratch, same disk)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be fetched and the disk needed."),
    as_json: JsonOpt = False,
) -> None:
    """Pack a signed bundle from a recipe; run again after an interruption to resume.

    Exit 1 if a check fails (disk space, missing files, kernel mismatch), 2 for a bad recipe or source,
    4 if the Hub or the index cannot be reached.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.pack.pack import dry_run_pack, pack_bundle
        from gptossctl.pack.spec import load_spec

        recipe, spec_dir = load_spec(spec)
        if dry_run:
            return dry_run_pack(recipe, spec_dir, out, model_dir=model_dir, wheelhouse=wheelhouse)
        keys = _signing_keys(key)
        with progress_bar("packing") as (total, advance):
            return pack_bundle(recipe, spec_dir, out, keys, model_dir=model_dir, wheelhouse=wheelhouse,
                               version=version, expires_in=expires_in, workers=workers, scratch=scratch,
                               progress=advance, on_total=total)

    def render(r) -> None:  # type: ignore[no-untyped-def]
        from gptossctl.pack.pack import PackPlan

        if isinstance(r, PackPlan):
            d = r.to_dict()
            for f in d["files"]:
                stdout.print(f"  {f['path']}  {_human_size(f['size']) if f['size'] is not None else '?'}")
            for item in d["to_fetch"]:
                stdout.print(f"  fetch: {item}")
            stdout.print(f"dry run: {len(d['files'])} files, {_human_size(d['known_bytes'])} known; disk needed "
                         f"{_human_size(d['disk_needed'])}, free {_human_size(d['disk_free'])}; nothing fetched")
            return
        stdout.print(
        f"packed {r.path}: {r.manifest.name} v{r.manifest.version}, {len(r.manifest.files)} files, "
        f"{_human_size(r.manifest.total_size)} ({r.copied} copied, {r.reused} resumed), "
        f"signed by {len(r.signers)} key(s), expires {r.manifest.expires.isoformat()}")

    run(action, as_json=as_json, render=render)


@app.command("sign")
def sign(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    key: Path = typer.Option(..., "--key", help="Signing key (.key) of the co-signer."),
    as_json: JsonOpt = False,
) -> None:
    """Add a co-signature after re-hashing every file. Exit 1 if the files do not match the manifest."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.sign import cosign_bundle

        return cosign_bundle(bundle, _signing_keys([key])[0])

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"signed {r.path} with {r.keyid}; {len(r.signers)} signature(s) now"))


@app.command("verify")
def verify(
    bundle: Path = typer.Argument(..., help="Bundle directory, directory of parts, one part, or a delta."),
    trust: TrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    revoked: RevokedOpt = [],  # noqa: B006
    clock_skew: str = typer.Option("5m", "--clock-skew", help="Allowance for clock drift, e.g. 5m, 1h."),
    min_version: MinVersionOpt = None,
    workers: WorkersOpt = None,
    trust_root: TrustRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify signatures, expiry and every byte of a bundle (or of parts or a delta), offline.

    Trust: --trust KEY.pub (with --threshold), or --trust-root ROOT.json (its release signers and threshold).
    A signature by a key neither names is reported and not counted.

    Exit 1 with every finding listed (tampering, missing, extra or damaged files and parts, bad
    signatures, expiry).
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.materialize import verify_source

        if trust_root is not None and (trust or revoked):
            raise UsageError("give --trust or --trust-root, not both", code="trust.both_given",
                             hint="the root names the keys and the threshold")
        policy = trust_root_policy(trust_root, clock_skew=clock_skew, min_version=min_version) if trust_root \
            else trust_policy(trust, threshold=threshold, revoked=revoked, clock_skew=clock_skew,
                              min_version=min_version)
        with progress_bar("verifying") as (total, advance):
            return verify_source(bundle, policy, workers=workers, progress=advance, on_total=total)

    run(action, as_json=as_json, render=_render_verified)


@app.command("inspect")
def inspect(bundle: Path = typer.Argument(..., help="Bundle directory, a directory of its parts, one .part file, "
                                          "or a delta."),
            trust_root: TrustRootOpt = None, as_json: JsonOpt = False) -> None:
    """Show what is on the stick: model, version, files and sizes, signers (named by --trust-root), expiry;
    for parts, which are here and which are missing; for a delta, its base. Read from the signed manifest and
    the part headers only: nothing is hashed and no signature checked (not a verification: 'bundle verify').

    Exit 0 read (parts may be missing), 1 a part here is damaged (truncated, edited header), 2 not a bundle
    or part."""

    def render(r: Any) -> None:
        from rich.table import Table

        d = r.to_dict()
        stdout.print(f"{escape(d['name'])} v{d['version']}  ({d['source']} {escape(d['bundle'])})")
        stdout.print(f"created {d['created']}  expires {d['expires']}"
                     f"{'  [red]EXPIRED[/red]' if d['expired'] else ''}")
        stdout.print(f"files: {d['files']}, {_human_size(d['bytes'])}")
        t = Table("component", "files", "size", "details", box=None)
        for name, c in d["sizes"].items():
            extra = d["components"].get(name, {})
            t.add_row(name, str(c["files"]), _human_size(c["bytes"]),
                      escape(", ".join(f"{k}={v}" for k, v in extra.items()
                                     if k not in ("files", "bytes") and not isinstance(v, dict | list))))
        stdout.print(t)
        stdout.print("contents:")
        for f in d["contents"]:
            stdout.print(f"  {escape(f['path'])}  {_human_size(f['size'])}")
        stdout.print(f"signers: {escape(', '.join(d['signers'])) or 'none'}")
        parts = d["parts"]
        if parts:
            if parts["base"]:
                b = parts["base"]
                stdout.print(f"delta: applies to {escape(b['name'])} v{b['version']} (manifest sha256 "
                             f"{b['manifest_sha256']}); it carries {_human_size(parts['carried_bytes'])}, the rest "
                             "comes from that base")
            stdout.print(f"parts here: {len(parts['present'])} of {parts['total']}")
            for p in parts["present"]:
                stdout.print(f"  present  part {p['part']}  {escape(p['name'])}  {_human_size(p['size'])}")
            for p in parts["missing"]:
                stdout.print(f"  [yellow]missing[/yellow]  part {p['part']}  {escape(p['name'])}  "
                             f"{_human_size(p['size'])}")
        for f in r.findings:
            stdout.print(f"[red]{f.code}[/red] {escape(f.subject)}: {escape(f.message)}")
        stdout.print("not verified: read from the signed manifest and the part headers, no byte hashed and no "
                     "signature checked; run 'gptossctl bundle verify' for that")

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.materialize import inspect_source

        names = trust_root_policy(trust_root).name_of if trust_root is not None else (lambda _k: None)
        return inspect_source(bundle, name_of=names)

    run(action, as_json=as_json, render=render, exit_code=lambda r: 1 if r.damaged else 0)


# ---- carrying bundles across the gap: split, join, copy, delta, apply (docs/bundle-format.md) ------

PartSizeOpt = Annotated[str, typer.Option("--part-size", help="Largest part: fat32 (4 GiB - 1 byte), dvd, dvd-dl, "
                                           "bd25, 4G, 700MiB, 4700MB, bytes.")]
LimitRateOpt = Annotated[str | None, typer.Option("--limit-rate", help="At most this many bytes per second, e.g. 1M "
                                                  "(slow links).")]
CarryTrustOpt = Annotated[list[Path], typer.Option("--trust", help="Also check signatures with this key (.pub); "
                                                   "repeatable. Without it: integrity against the manifest only.")]


def _carry_policy(trust: list[Path], threshold: int) -> Any:
    return trust_policy(trust, threshold=threshold) if trust else None


def _carry_opts(workers: int | None, limit_rate: str | None, total: Any, advance: Any) -> Any:
    from gptossctl.bundle.parts import parse_size
    from gptossctl.bundle.transfer import TransferOptions

    rate = parse_size(limit_rate) if limit_rate else None
    return TransferOptions(workers=workers, progress=advance, on_total=total, limit_rate=rate)


def _render_verified(r: Any) -> None:
    if hasattr(r, "summary"):
        stdout.print(f"[green]verified[/green] {r.summary()}")
        return
    stdout.print(
        f"[green]verified[/green] {r.root}: {r.manifest.name} v{r.manifest.version}, {len(r.manifest.files)} files, "
        f"{_human_size(r.bytes_hashed)} hashed, {len(r.signers)} trusted signature(s) ("
        + ", ".join(escape(f"{s['name']} {ident(str(s['keyid']))}") for s in getattr(r, "signed_by", ())) + "), "
        f"expires {r.manifest.expires.isoformat()}")
    for note in getattr(r, "notes", ()):
        stderr.print(f"[yellow]note[/yellow] ({note.code}): {escape(note.message)}")


def _render_parts(r: Any) -> None:
    d = r.to_dict()
    for p in d["parts"]:
        stdout.print(f"  {p['name']}  {_human_size(p['size'])}  {p['pieces']} piece(s)")
    what = "delta" if d["kind"] == "delta" else "split"
    stdout.print(f"{what}: {len(d['parts'])} part(s), {_human_size(d['bytes'])} (bundle {_human_size(d['bundle_bytes'])})"
                 f" in {r.out}; every piece verified as written; signatures {d['signatures']}")


def _render_transfer(verb: str) -> Any:
    def render(r: Any) -> None:
        d = r.to_dict()
        where = d.get("bundle") or d.get("dst")
        stdout.print(f"{verb} {where}: {_human_size(d['bytes_copied'])} copied, {_human_size(d['bytes_resumed'])} "
                     f"resumed, every piece verified as written; signatures {d['signatures']}")
        for f in d.get("ignored", []):
            stderr.print(f"[yellow]ignored[/yellow] {f['subject']}: {f['message']}")
        if d.get("journal_reset"):
            stderr.print(f"[yellow]note[/yellow] {escape(d['journal_reset'])}")
    return render


@app.command("split")
def split(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    out: Path = typer.Option(..., "--out", help="Directory for the parts (created)."),
    part_size: PartSizeOpt = "fat32",
    trust: CarryTrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Split a bundle into self-describing parts for removable media, each verifiable on its own.

    Exit 1 if the bundle is damaged or its signatures fail, 2 if a piece is larger than the part size.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.parts import parse_size, split_bundle

        with progress_bar("splitting") as (total, advance):
            return split_bundle(bundle, out, part_size=parse_size(part_size), policy=_carry_policy(trust, threshold),
                                opts=_carry_opts(workers, None, total, advance))

    run(action, as_json=as_json, render=_render_parts)


@app.command("join")
def join(
    places: list[Path] = typer.Argument(..., help="Directories (or part files) holding the parts, any order."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to create."),
    trust: CarryTrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join parts from one or more places into the bundle, verifying every piece; rerun to resume.

    Exit 1 naming every missing or damaged part (or failed signature), 2 if OUT exists.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.parts import join_parts

        with progress_bar("joining") as (total, advance):
            return join_parts(places, out, policy=_carry_policy(trust, threshold),
                              opts=_carry_opts(workers, None, total, advance))

    run(action, as_json=as_json, render=_render_transfer("joined"))


@app.command("copy")
def copy(
    src: list[Path] = typer.Argument(..., help="Bundle directory, or parts: directories or .part files."),
    dst: Path = typer.Argument(..., help="Destination: a new bundle directory, or a directory collecting parts."),
    trust: CarryTrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    limit_rate: LimitRateOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a bundle or parts (like cp: SRC... DST), hashing as it writes; run it again to resume.

    Exit 1 if the source is damaged or the disk too small (nothing complete is left), 3 if another copy
    writes there, 4 if the disk fills or fails mid-copy (run again to resume).
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.copy import copy_bundle

        with progress_bar("copying") as (total, advance):
            return copy_bundle(src, dst, policy=_carry_policy(trust, threshold),
                               opts=_carry_opts(workers, limit_rate, total, advance))

    run(action, as_json=as_json, render=_render_transfer("copied"))


@app.command("delta")
def delta(
    old: Path = typer.Argument(..., help="The bundle the far side already has."),
    new: Path = typer.Argument(..., help="The new bundle."),
    out: Path = typer.Option(..., "--out", help="Directory for the delta's parts (created)."),
    part_size: PartSizeOpt = "fat32",
    trust: CarryTrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a delta holding only the pieces of NEW that OLD lacks, signed by NEW's signatures.

    Exit 1 if NEW is damaged or its signatures fail, 2 for the same bundle twice or an existing OUT.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.delta import make_delta
        from gptossctl.bundle.parts import parse_size

        with progress_bar("writing delta") as (total, advance):
            return make_delta(old, new, out, part_size=parse_size(part_size), policy=_carry_policy(trust, threshold),
                              opts=_carry_opts(workers, None, total, advance))

    def render(r: Any) -> None:
        _render_parts(r.written)
        stdout.print(f"{r.shipped_pieces} piece(s) shipped, {r.reused_pieces} ({_human_size(r.reused_bytes)}) "
                     f"come from the base {r.written.base.name} v{r.written.base.version}")

    run(action, as_json=as_json, render=render)


@app.command("apply")
def apply(
    delta_dir: Path = typer.Argument(..., metavar="DELTA", help="Directory (or part file) of the delta."),
    base: Path = typer.Option(..., "--base", help="The bundle (or installed release) the delta was made against."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to create."),
    trust: CarryTrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the new bundle from a delta and its base, verifying every byte; rerun to resume.

    Exit 1 for the wrong base (named), a missing or damaged delta part, or a failed signature.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.delta import apply_delta

        with progress_bar("applying") as (total, advance):
            return apply_delta([delta_dir], base, out, policy=_carry_policy(trust, threshold),
                               opts=_carry_opts(workers, None, total, advance))

    run(action, as_json=as_json, render=_render_transfer("rebuilt"))
