"""`gptossctl bundle ...`: pack, sign, verify, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gptossctl.cli.options import (JsonOpt, MinVersionOpt, RevokedOpt, ThresholdOpt, TrustOpt, VersionOpt,
                                   WorkersOpt, trust_policy)
from gptossctl.cli.output import progress_bar, run, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="Pack, sign, verify and inspect signed bundles.")


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
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    trust: TrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: ThresholdOpt = 1,
    revoked: RevokedOpt = [],  # noqa: B006
    clock_skew: str = typer.Option("5m", "--clock-skew", help="Allowance for clock drift, e.g. 5m, 1h."),
    min_version: MinVersionOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify signatures, expiry and every byte of a bundle, offline.

    Exit 1 with every finding listed (tampering, missing or extra files, bad signatures, expiry).
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.verify import verify_bundle

        policy = trust_policy(trust, threshold=threshold, revoked=revoked, clock_skew=clock_skew,
                              min_version=min_version)
        with progress_bar("verifying") as (total, advance):
            return verify_bundle(bundle, policy, workers=workers, progress=advance, on_total=total)

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"[green]verified[/green] {r.root}: {r.manifest.name} v{r.manifest.version}, {len(r.manifest.files)} files, "
        f"{_human_size(r.bytes_hashed)} hashed, {len(r.signers)} trusted signature(s), "
        f"expires {r.manifest.expires.isoformat()}"))


@app.command("inspect")
def inspect(bundle: Path = typer.Argument(..., help="Bundle directory."), as_json: JsonOpt = False) -> None:
    """Show what a bundle holds, its signers and expiry, without re-hashing (this is not verification)."""

    def render(r: Any) -> None:
        from rich.table import Table

        d = r.to_dict()
        stdout.print(f"{d['name']} v{d['version']}  created {d['created']}  expires {d['expires']}"
                     f"{'  [red]EXPIRED[/red]' if d['expired'] else ''}")
        t = Table("component", "files", "size", "details", box=None)
        for name, c in d["components"].items():
            extra = {k: v for k, v in c.items() if k not in ("files", "bytes")}
            t.add_row(name, str(c.get("files", "")), _human_size(c.get("bytes", 0)),
                      ", ".join(f"{k}={v}" for k, v in extra.items()))
        stdout.print(t)
        stdout.print(f"signers: {', '.join(d['signers']) or 'none'}")
        stderr.print("[dim]not verified: run 'gptossctl bundle verify' to check signatures and hashes[/dim]")

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.sign import inspect_bundle

        return inspect_bundle(bundle)

    run(action, as_json=as_json, render=render)
