"""`gptossctl trust show | new | sign | rotate`: the instance's signed trust root (gptossctl/bundle/trustroot.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from gptossctl.cli.options import (
    ExistingRootOpt,
    ForceOpt,
    InstanceOpt,
    JsonOpt,
    YesOpt,
)
from gptossctl.cli.output import ident, run, stderr, stdout
from gptossctl.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="The signed trust root of an instance: who signs releases, how many.")

SignerOpt = Annotated[list[str], typer.Option("--signer", help="Release signer NAME=KEY.pub (or KEY.pub: named "
                                              "after the file); repeatable.")]
AdvisorySignerOpt = Annotated[list[str], typer.Option("--advisory-signer", help="Advisory signer NAME=KEY.pub; "
                                                      "repeatable.")]
RootThresholdOpt = Annotated[int, typer.Option("--threshold", min=1, max=64,
                                               help="Distinct release signatures required (k of n).")]
AdvisoryThresholdOpt = Annotated[int | None, typer.Option("--advisory-threshold", min=0, max=64,
                                                          help="Distinct advisory signatures required.")]
ExpiresOpt = Annotated[str, typer.Option("--expires", help="Lifetime of the root, e.g. 365d, 52w.")]
RootVersionOpt = Annotated[int, typer.Option("--version", min=1, max=2**53,
                                             help="Root version: 1 for a first root, current+1 for a rotation.")]
RootFileArg = Annotated[Path, typer.Argument(help="Trust root file (gptossctl.trust-root/1 in a DSSE envelope).")]


def _named(values: list[str]) -> list[tuple[str, Path]]:
    from gptossctl.bundle.trustroot import signer_name

    out = []
    for v in values:
        name, sep, path = v.partition("=")
        out.append((name, Path(path)) if sep else (signer_name(Path(v)), Path(v)))
    return out


def _render_root(d: dict[str, Any]) -> None:
    from rich.table import Table

    stdout.print(f"trust root version {d['version']}  expires {d['expires']}"
                 f"{'  [red]EXPIRED[/red]' if d.get('expired') else ''}  digest {d['digest']}")
    t = Table("signer", "key id", "algorithm", "roles", box=None)
    for s in d["signers"]:
        t.add_row(escape(s["name"]), ident(s["keyid"]), s["algorithm"], ", ".join(s["roles"]))
    stdout.print(t)
    for role, r in d["roles"].items():
        stdout.print(f"{role}: {r['threshold']} of {', '.join(map(escape, r['signers'])) or 'none'}")
    stdout.print(f"signed by: {', '.join(map(escape, d.get('signed_by', []))) or 'nobody yet'}")


@app.command("show")
def show(file: Annotated[Path | None, typer.Argument(help="A root file to show instead of an instance's.")] = None,
         instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Show a trust root: signers by name, roles, thresholds, expiry, version and digest.

    Exit 1 when the instance has no trust root (or the file is not one)."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.layout import pick_instance
        from gptossctl.install.trust import show as do_show

        return do_show(root, None if file else pick_instance(root, instance), file)

    run(action, as_json=as_json, render=lambda r: _render_root(r.to_dict()))


@app.command("new")
def new(
    out: Annotated[Path, typer.Option("--out", help="Where to write the unsigned root.")],
    signer: SignerOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: RootThresholdOpt = 1,
    advisory_signer: AdvisorySignerOpt = [],  # noqa: B006
    advisory_threshold: AdvisoryThresholdOpt = None,
    expires: ExpiresOpt = "365d",
    version: RootVersionOpt = 1,
    require_known_signers: bool = typer.Option(False, "--require-known-signers",
                                               help="Fail bundles that carry a signature by a key the root "
                                                    "does not know."),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write an unsigned trust root from named public keys (connected side); sign it with 'trust sign'."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.trustroot import write_new_root
        from gptossctl.durations import parse_duration

        if not signer:
            raise UsageError("a trust root needs at least one --signer NAME=KEY.pub", code="trust.no_signers",
                             hint="name each release signer's public key")
        return write_new_root(out, _named(signer), threshold, lifetime_s=parse_duration(expires), version=version,
                              advisory=_named(advisory_signer), advisory_threshold=advisory_threshold,
                              require_known_signers=require_known_signers, force=force)

    def render(r: Any) -> None:
        _render_root(r.to_dict())
        stderr.print(f"next: gptossctl trust sign {escape(str(r.path))} --key KEY (by "
                     f"{r.signed.root.roles['release'].threshold} release signer(s))")

    run(action, as_json=as_json, render=render)


@app.command("sign")
def sign(file: RootFileArg,
         key: Annotated[Path, typer.Option("--key", help="Signing key (.key); passphrase from "
                                           "GPTOSSCTL_KEY_PASSPHRASE or a prompt.")],
         as_json: JsonOpt = False) -> None:
    """Add one signature to a trust root file."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.bundle.keys import load_signing_key
        from gptossctl.bundle.trustroot import sign_root_file

        return sign_root_file(file, load_signing_key(key))

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"signed {escape(str(r.path))}; signed by {', '.join(map(escape, r.to_dict()['signed_by']))}"))


@app.command("rotate")
def rotate(file: RootFileArg, instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), yes: YesOpt = False,
           as_json: JsonOpt = False) -> None:
    """Replace the instance's trust root with a new one signed by the current root's release threshold and its
    own, whose version is the current one + 1. The running service is not touched.

    Exit 1 when the new root is not signed as required or its version is not the next one (nothing changed)."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.layout import pick_instance
        from gptossctl.install.trust import rotate as do_rotate

        if not yes:
            raise UsageError("trust rotate changes who may sign this instance's releases", code="trust.confirm",
                             hint="pass --yes to confirm")
        return do_rotate(root, pick_instance(root, instance), file)

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"[green]rotated[/green] {r.instance}: trust root v{r.before['version']} -> v{r.after['version']} "
        f"({ident(r.after['digest'])}), release: {r.after['roles']['release']['threshold']} of "
        f"{', '.join(map(escape, r.after['roles']['release']['signers']))}"))
