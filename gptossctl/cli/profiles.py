"""`gptossctl profiles list`: every profile, whether it fits, and the reason; without a GPU probe, the catalogue."""

from __future__ import annotations

from pathlib import Path

import typer

from gptossctl.cli.hw import (
    AmdOpt,
    BundleOpt,
    ConcurrencyOpt,
    ContextOpt,
    CsvOpt,
    ModelOpt,
    PrefixOpt,
    ReplicasOpt,
    RocmOpt,
    TpOpt,
    XmlOpt,
    assess_from_cli,
    render_inventory,
    render_layout,
    render_profiles,
)
from gptossctl.cli.output import JsonOpt, run, stdout

app = typer.Typer(no_args_is_help=True, help="List hardware profiles and whether they fit.")


@app.command("list")
def list_(model: str | None = ModelOpt, bundle: Path | None = BundleOpt, nvidia_smi_xml: Path | None = XmlOpt,
          nvidia_smi_csv: Path | None = CsvOpt, rocm_smi_json: Path | None = RocmOpt,
          amd_smi_json: Path | None = AmdOpt, prefix: Path | None = PrefixOpt, replicas: int | None = ReplicasOpt,
          tp: int | None = TpOpt, max_model_len: int | None = ContextOpt, concurrency: int | None = ConcurrencyOpt,
          as_json: bool = JsonOpt) -> None:
    """List every profile with fits / does not fit and the reason, so the chosen path is explained. Where no
    GPU probe can run (a workstation without a GPU), list the catalogue: each profile's model classes, the
    hardware it matches and the memory each model of its class needs.

    Exit 0 when at least one fits (within --replicas/--tp if given) or the catalogue is listed, 1 when none
    fits, 2 for a meaningless override.
    """
    from gptossctl.hardware.catalogue import Catalogue

    def render(report) -> None:  # type: ignore[no-untyped-def]
        if isinstance(report, Catalogue):
            render_catalogue(report)
            return
        render_inventory(report)
        for m in report.models:
            render_profiles(m)
            render_layout(m)

    run(lambda: assess_from_cli(model, bundle, nvidia_smi_xml, nvidia_smi_csv, rocm_smi_json, amd_smi_json, prefix,
                                (replicas, tp, max_model_len, concurrency), catalogue=True),
        as_json=as_json, render=render,
        exit_code=lambda r: 0 if isinstance(r, Catalogue) or r.ok else 1)


def render_catalogue(catalogue) -> None:  # type: ignore[no-untyped-def]
    from rich.markup import escape
    from rich.table import Table

    stdout.print(f"[yellow]{escape(catalogue.why)}[/yellow]: the catalogue, judged against no machine "
                 "(give a capture, e.g. --nvidia-smi-csv, to judge a target)")
    t = Table("profile", "classes", "matches", "context x seqs", "needs", box=None, title="profiles",
              title_justify="left")
    for e in catalogue.entries:
        p = e.profile
        m = p.match
        arch = ", ".join([f"sm_{c.replace('.', '')}" for c in m.compute_capability] + list(m.gfx)) or "CPU"
        tps = f", TP {'/'.join(map(str, m.tensor_parallel_sizes))}" if m.vendor != "cpu" else ""
        needs = "; ".join(r.describe() for r in e.requirements) or "-"
        t.add_row(p.name, ", ".join(p.model_classes), f"{m.vendor} {arch}{tps}",
                  f"{p.context_len} x {p.sizing.concurrency}", escape(needs))
    stdout.print(t)
