"""`gptossctl demo`: the whole path on the embedded tiny model, no GPU and no network."""

from __future__ import annotations

from pathlib import Path

import typer

from gptossctl.cli.output import JsonOpt, run, stderr, stdout


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Work directory (replaced on each run)."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the demo end to end on the embedded tiny model. Exit 1 if any step did not behave."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.demo.run import run_demo

        return run_demo(out, log=lambda m: stderr.print(m, markup=False))

    def render(r) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        t = Table("step", "result", "detail", title="gptossctl demo", box=None)
        for s in r.steps:
            t.add_row(s.name, "[green]ok[/green]" if s.ok else "[red]FAIL[/red]", s.detail)
        stdout.print(t)
        stdout.print("[green]demo passed[/green]" if r.ok else "[red]demo FAILED[/red]")

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)
