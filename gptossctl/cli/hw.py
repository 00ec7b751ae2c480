"""`gptossctl hw check` and the rendering shared with `profiles list`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from gptossctl.cli.output import JsonOpt, run, stdout

app = typer.Typer(no_args_is_help=True, help="Check whether this machine (or a captured target) serves gpt-oss.")

ModelOpt = typer.Option(None, "--model", help="gpt-oss-120b, gpt-oss-20b or tiny: the published facts (default: the "
                        "bundle's own model, sized from its config.json, else both published models).")
BundleOpt = typer.Option(None, "--bundle", help="Bundle directory: its own model (sized from its config.json and "
                         "weights), profiles, CUDA line and vLLM version.")
XmlOpt = typer.Option(None, "--nvidia-smi-xml", help="Review a target's `nvidia-smi -q -x` output.")
CsvOpt = typer.Option(None, "--nvidia-smi-csv", help="Review a target's `nvidia-smi --query-gpu=... --format=csv`.")
RocmOpt = typer.Option(None, "--rocm-smi-json", help="Review `rocm-smi --showproductname --showmeminfo vram --json`.")
AmdOpt = typer.Option(None, "--amd-smi-json", help="Review `amd-smi static --json`.")
PrefixOpt = typer.Option(None, "--prefix", help="Where releases will live, for the disk check (default /opt/gptoss).")
ReplicasOpt = typer.Option(None, "--replicas", help="Replicas to run on this host (default: as many as fit).")
TpOpt = typer.Option(None, "--tp", help="Tensor-parallel size of each replica: 1, 2, 4 or 8 (default: the "
                     "smallest that fits).")
ContextOpt = typer.Option(None, "--max-model-len", help="Context each replica must serve (default: the profile's).")
ConcurrencyOpt = typer.Option(None, "--concurrency", help="Sequences of that context each replica must hold at once "
                              "(default: the profile's).")
_STYLE = {"pass": "green", "warn": "yellow", "fail": "red"}


def assess_from_cli(model: str | None, bundle: Path | None, xml: Path | None, csv: Path | None,
                    rocm: Path | None, amd: Path | None, prefix: Path | None,
                    layout: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None),
                    *, catalogue: bool = False) -> Any:
    """`layout` is (replicas, tp, max-model-len, concurrency) as given on the command line. With `catalogue`
    (profiles list), a machine with no GPU probe gets the profile catalogue instead of exit 3."""
    from gptossctl.adapters.gpus import Captures
    from gptossctl.errors import UsageError
    from gptossctl.hardware.layout import LayoutRequest
    from gptossctl.install.preflight import assess, list_profiles

    if model is not None and not model.strip():
        raise UsageError("--model is empty", code="usage.bad_model",
                         hint="give gpt-oss-120b, gpt-oss-20b or tiny, or leave --model out (the bundle's, else both)")
    request = LayoutRequest(*layout)  # validated before anything is probed: nonsense is a usage error
    judge = list_profiles if catalogue else assess
    return judge(model=model, bundle=bundle, captures=Captures(xml, csv, rocm, amd),
                 disk_paths=[prefix] if prefix else None, layout=request)


def render_layout(model_report: Any) -> None:
    layout = model_report.layout
    if layout is None:
        return
    stdout.print(f"[bold]layout for {layout.model}[/bold] ({layout.profile}): {escape(layout.reason)}")
    for r in layout.replicas:
        where = ", ".join(map(str, r.gpus)) or "host CPU"
        stdout.print(f"  replica {r.index}: GPU {where}" + (f" {escape(r.mig_device)}" if r.mig_device else ""))
    for why in layout.unused:
        stdout.print(f"  [dim]unused: {escape(why)}[/dim]")


def render_inventory(report: Any) -> None:
    from rich.table import Table

    inv = report.inventory
    t = Table("gpu", "name", "memory MiB", "free MiB", "arch", "MIG", title=f"GPUs ({escape(inv.source)}), "
              f"driver {inv.driver_version or '?'}" + (f", CUDA {inv.cuda_driver_version}" if inv.cuda_driver_version else ""),
              box=None, title_justify="left")
    for g in inv.gpus:
        arch = g.gfx or (f"sm_{g.cc_text.replace('.', '')}{'*' if g.cc_inferred else ''}" if g.cc_text else "?")
        mig = "on" if g.mig_enabled else "off" if g.mig_enabled is False else "-"
        t.add_row(str(g.index), escape(g.name), str(g.memory_total_mib or "?"), str(g.memory_free_mib or "?"), arch, mig)
    if not inv.gpus:
        t.add_row("-", "no GPU", "", "", "", "")
    stdout.print(t)


def render_profiles(model_report: Any) -> None:
    from rich.table import Table

    t = Table("profile", "fits", "TP", "why", box=None, title=f"profiles for {model_report.model}", title_justify="left")
    for f in model_report.fits:
        why = (f.need.describe() if f.need else "") if f.fits else "; ".join(f.reasons)
        why += "".join(f"; {w}" for w in f.warnings)
        t.add_row(f.profile.name, "[green]yes[/green]" if f.fits else "[red]no[/red]",
                  str(f.tensor_parallel or "-"), escape(why))
    stdout.print(t)


def render_report(report: Any) -> None:
    from rich.table import Table

    render_inventory(report)
    for m in report.models:
        if m.facts is not None:
            f = m.facts
            stdout.print(f"[bold]{escape(m.model)}[/bold]: {f.model_class} ({f.layers} layers, {f.experts} experts, "
                         f"hidden {f.hidden_size}, {f.quantization}, {f.weights_bytes / (1 << 30):.1f} GiB of "
                         f"weights; {escape(f.source)})")
        t = Table("", "check", "subject", "result", box=None, title=f"checks for {m.model}", title_justify="left")
        for c in m.checks:
            text = escape(c.message) + (f"\n[dim]-> {escape(c.remedy)}[/dim]" if c.remedy and c.status != "pass" else "")
            t.add_row(f"[{_STYLE[c.status]}]{c.status}[/]", c.id, escape(c.subject), text)
        stdout.print(t)
        render_profiles(m)
        render_layout(m)
        colour = "green" if m.chosen else "red"
        stdout.print(f"[{colour}]{m.model}: {escape(m.reason)}[/{colour}]\n")


@app.command("check")
def check(model: str | None = ModelOpt, bundle: Path | None = BundleOpt, nvidia_smi_xml: Path | None = XmlOpt,
          nvidia_smi_csv: Path | None = CsvOpt, rocm_smi_json: Path | None = RocmOpt,
          amd_smi_json: Path | None = AmdOpt, prefix: Path | None = PrefixOpt, replicas: int | None = ReplicasOpt,
          tp: int | None = TpOpt, max_model_len: int | None = ContextOpt, concurrency: int | None = ConcurrencyOpt,
          as_json: bool = JsonOpt) -> None:
    """Say which hardware profile fits this machine (or a capture), the replica layout, and why not the others.

    Exit 0 when a profile fits (within --replicas/--tp if given), 1 when none does, 2 for a meaningless
    --replicas/--tp/--max-model-len/--concurrency, 3 when no probe can run here.
    """
    run(lambda: assess_from_cli(model, bundle, nvidia_smi_xml, nvidia_smi_csv, rocm_smi_json, amd_smi_json, prefix,
                                (replicas, tp, max_model_len, concurrency)),
        as_json=as_json, render=render_report, exit_code=lambda r: 0 if r.ok else 1)
