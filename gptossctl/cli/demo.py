"""`gptossctl demo`: the whole path on a tiny model, no GPU and no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from gptossctl.cli.options import JsonOpt
from gptossctl.cli.output import run, stderr, stdout

_STYLE = {"ok": "green", "failed": "red", "skipped": "dim"}


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Work directory (a demo's own is replaced on each run; "
                             "any other existing directory is refused)."),
    staged: bool = typer.Option(False, "--staged", help="The quick path: stop at a staged install (no container, "
                                "no vLLM, no root)."),
    wheelhouse: Path | None = typer.Option(None, "--wheelhouse", help="vLLM's wheels for this machine (the bundle's "
                                           "Python stack); scripts/demo.sh prepares them."),
    bootstrap: Path | None = typer.Option(None, "--bootstrap-wheels", help="gptossctl's wheel and its dependencies, "
                                          "installed offline inside the container; scripts/demo.sh prepares them."),
    as_json: JsonOpt = False,
) -> None:
    """Run the demo end to end: by default serve the tiny harmony gpt-oss from a booted systemd container.

    Exit 0 when every step behaved, 1 when one did not (the table says which), 2 for bad options, 3 when no
    container can be booted here (not root, no systemd-nspawn): use --staged.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.demo.full import FullInputs
        from gptossctl.demo.run import run_demo

        inputs = FullInputs(wheelhouse, bootstrap) if wheelhouse and bootstrap else None
        with stderr.status("starting", spinner="dots") as live:
            def on_step(name: str, doing: str) -> None:
                live.update(f"[bold]{escape(name)}[/bold]: {escape(doing)}")
                stderr.print(f"[dim]- {escape(name)}[/dim]")

            return run_demo(out, staged=staged, inputs=inputs, on_step=None if as_json else on_step)

    def render(r: Any) -> None:
        from rich.table import Table

        t = Table("step", "result", "seconds", "detail", title=f"gptossctl demo ({r.mode})", box=None,
                  title_justify="left")
        for s in r.steps:
            st = _STYLE.get(s.status, "white")
            t.add_row(escape(s.step), f"[{st}]{s.status}[/{st}]", f"{s.seconds:.1f}", escape(s.detail))
        stdout.print(t)
        if r.error is not None:
            stdout.print(f"[red]demo FAILED[/red]: {escape(r.error.message)}")
            if r.error.hint:
                stdout.print(f"[yellow]next:[/yellow] {escape(r.error.hint)}")
        else:
            total = sum(s.seconds for s in r.steps)
            stdout.print(f"[green]demo passed[/green] in {total / 60:.1f} min; files in {r.out}"
                         + (f", canary report {r.outcome.files.get('report.html')}" if r.outcome.files else ""))

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)
