"""`gptossctl profiles list`: every profile, whether it fits, and the reason."""

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
from gptossctl.cli.output import JsonOpt, run

app = typer.Typer(no_args_is_help=True, help="List hardware profiles and whether they fit.")


@app.command("list")
def list_(model: str | None = ModelOpt, bundle: Path | None = BundleOpt, nvidia_smi_xml: Path | None = XmlOpt,
          nvidia_smi_csv: Path | None = CsvOpt, rocm_smi_json: Path | None = RocmOpt,
          amd_smi_json: Path | None = AmdOpt, prefix: Path | None = PrefixOpt, replicas: int | None = ReplicasOpt,
          tp: int | None = TpOpt, max_model_len: int | None = ContextOpt, concurrency: int | None = ConcurrencyOpt,
          as_json: bool = JsonOpt) -> None:
    """List every profile with fits / does not fit and the reason, so the chosen path is explained.

    Exit 0 when at least one fits (within --replicas/--tp if given), 1 when none does, 2 for a meaningless
    override, 3 when no probe can run here.
    """

    def render(report) -> None:  # type: ignore[no-untyped-def]
        render_inventory(report)
        for m in report.models:
            render_profiles(m)
            render_layout(m)

    run(lambda: assess_from_cli(model, bundle, nvidia_smi_xml, nvidia_smi_csv, rocm_smi_json, amd_smi_json, prefix,
                                (replicas, tp, max_model_len, concurrency)),
        as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)
