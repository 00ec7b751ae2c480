"""Choose where the inventory comes from: a capture of another machine, or this machine live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gptossctl.adapters.amdsmi import probe_amdsmi
from gptossctl.adapters.captures import (
    parse_amd_smi_json,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_xml,
    parse_rocm_smi_json,
)
from gptossctl.adapters.host import probe_host
from gptossctl.adapters.nvml import probe_nvml
from gptossctl.errors import EnvironmentNotReady, UsageError
from gptossctl.hardware.inventory import Inventory


@dataclass(frozen=True)
class Captures:
    """Captured tool output of a target that cannot run gptossctl yet (at most one is given)."""

    nvidia_smi_xml: Path | None = None
    nvidia_smi_csv: Path | None = None
    rocm_smi_json: Path | None = None
    amd_smi_json: Path | None = None


def probe_capture(captures: Captures) -> Inventory | None:
    given = [(p, f) for p, f in ((captures.nvidia_smi_xml, parse_nvidia_smi_xml),
                                 (captures.nvidia_smi_csv, parse_nvidia_smi_csv),
                                 (captures.rocm_smi_json, parse_rocm_smi_json),
                                 (captures.amd_smi_json, parse_amd_smi_json)) if p is not None]
    if len(given) > 1:
        raise UsageError("give one capture at a time", code="hw.too_many_inputs",
                         hint="review each target's capture in its own run")
    if not given:
        return None
    path, parse = given[0]
    return parse(path)


def probe_live(*, host_paths: Sequence[Path] = (), gpu_required: bool = True) -> Inventory:
    """NVML first, then amdsmi; with neither, a GPU-less inventory only if no GPU is required."""
    host = probe_host(host_paths)
    errors = []
    for probe in (probe_nvml, probe_amdsmi):
        try:
            inv = probe()
        except EnvironmentNotReady as exc:
            errors.append(exc.message)
            continue
        return replace(inv, host=host)
    if gpu_required:
        raise EnvironmentNotReady(
            "no GPU probe can run here: " + "; ".join(errors), code="hw.no_probe",
            hint="run on the GPU host, or review a capture: --nvidia-smi-xml, --nvidia-smi-csv, "
                 "--rocm-smi-json or --amd-smi-json")
    return Inventory("host (no GPU probe)", (), host=host, notes=tuple(errors))
