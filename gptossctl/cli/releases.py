"""`gptossctl releases list | prune`: an instance's releases on disk, judged by the audit chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gptossctl.cli.options import ExistingRootOpt, InstanceOpt, JsonOpt
from gptossctl.cli.output import run, stderr, stdout
from gptossctl.install.layout import pick_instance

app = typer.Typer(no_args_is_help=True, help="The releases of an instance on disk: history, and pruning old ones.")

KeepOpt = Annotated[int, typer.Option("--keep", help="Releases to keep, N >= 1 (the current release and the "
                                      "rollback target are always kept).")]
_STYLE = {"current": "green", "rollback target": "cyan", "failed": "red", "unaudited": "bold red",
          "foreign": "yellow", "leftover": "yellow", "evidence": "red"}


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@app.command("list")
def list_(instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Show the instance's releases: version, bundle digest, signers, installed at and by (from the audit
    chain), state (current, rollback target, retired, failed) and size on disk.

    Exit 1 when a release record is one the audit chain does not vouch for (unaudited), or the chain is broken.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.releases import history

        return history(root, pick_instance(root, instance))

    def render(h) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        t = Table(box=None)
        for name in ("version", "bundle", "signers", "installed at", "by", "state", "size"):
            t.add_column(name, overflow="fold")  # wrapped, never cut: --json has every value whole
        for e in h.entries:
            st = _STYLE.get(e.state, "white")
            when = (e.installed_at or "-").replace("T", " ").replace("+00:00", "Z")
            t.add_row(escape(e.name), (e.bundle_sha256 or "-")[:12], escape(", ".join(map(str, e.signers)) or "-"),
                      escape(when), escape(e.installed_by or "-"), f"[{st}]{e.state}[/{st}]", _size(e.usage.bytes))
        stdout.print(t if h.entries else f"no release of {h.instance} on disk")
        for f in h.findings:
            stderr.print(f"[yellow]{escape(f.subject)}: {escape(f.message)}[/yellow]")

    run(action, as_json=as_json, render=render, exit_code=lambda h: 0 if h.ok else 1)


@app.command("prune")
def prune(keep: KeepOpt, instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"),
          dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed and freed; change nothing."),
          as_json: JsonOpt = False) -> None:
    """Remove the oldest releases beyond --keep N, never the current release or the rollback target; each
    removal is audited and the bytes freed are measured.

    Exit 2 for --keep 0 or while another gptossctl holds the lock; 1 when the audit chain is broken.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.releases import prune as do_prune

        return do_prune(root, pick_instance(root, instance), keep=keep, dry_run=dry_run)

    def render(r) -> None:  # type: ignore[no-untyped-def]
        verb = "would remove" if r.dry_run else "removed"
        for x in r.removed:
            stdout.print(f"{verb} {escape(x.name)} ({x.state}): {_size(x.bytes_freed)}")
        for e in r.kept:
            stdout.print(f"kept    {escape(e.name)} ({e.state})")
        stdout.print(f"{'would free' if r.dry_run else 'freed'} {_size(r.bytes_freed)} ({r.bytes_freed} bytes)")
        for f in r.findings:
            stderr.print(f"[yellow]{escape(f.subject)}: {escape(f.message)}[/yellow]")

    run(action, as_json=as_json, render=render)
