"""Choose where the inventory comes from: a capture of another machine, or this machine live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gptossctl.errors import EnvironmentNotReady, UsageError
from gptossctl.hardware.inventory import Gpu, Inventory


def probe_capture(*, nvidia_smi_xml: Path | None = None, nvidia_smi_csv: Path | None = None,
                  rocm_smi_json: Path | None = None, amd_smi_json: Path | None = None) -> Inventory | None:
    from gptossctl.adapters import captures

    given = [(p, f) for p, f in ((nvidia_smi_xml, captures.parse_nvidia_smi_xml),
                                 (nvidia_smi_csv, captures.parse_nvidia_smi_csv),
                                 (rocm_smi_json, captures.parse_rocm_smi_json),
                                 (amd_smi_json, captures.parse_amd_smi_json)) if p is not None]
    if len(given) > 1:
        raise UsageError("give one capture at a time", code="hw.too_many_inputs",
                         hint="review each target's capture in its own run")
    if not given:
        return None
    path, parse = given[0]
    return parse(path)


def probe_live(*, host_paths: Sequence[Path] = (), gpu_required: bool = True) -> Inventory:
    """NVML first, then amdsmi; with neither, a GPU-less inventory only if no GPU is required."""
    from gptossctl.adapters.host import probe_host
    from gptossctl.adapters.nvml import probe_nvml

    host = probe_host(host_paths)
    errors = []
    for probe in (probe_nvml, _probe_amdsmi):
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


def _probe_amdsmi() -> Inventory:
    """AMD through amdsmi (ROCm's Python library) when it is installed on the target."""
    try:
        import amdsmi  # type: ignore[import-not-found]
    except ImportError:
        raise EnvironmentNotReady("amdsmi is not installed (ROCm hosts only)", code="hw.no_amdsmi") from None
    try:
        amdsmi.amdsmi_init()
    except Exception as exc:  # noqa: BLE001 - amdsmi raises its own hierarchy
        raise EnvironmentNotReady(f"amdsmi cannot start ({exc})", code="hw.no_amdsmi") from None
    try:
        gpus = []
        for i, h in enumerate(amdsmi.amdsmi_get_processor_handles()):
            asic: dict[str, Any] = amdsmi.amdsmi_get_gpu_asic_info(h)
            total = amdsmi.amdsmi_get_gpu_memory_total(h, amdsmi.AmdSmiMemoryType.VRAM)
            used = amdsmi.amdsmi_get_gpu_memory_usage(h, amdsmi.AmdSmiMemoryType.VRAM)
            gpus.append(Gpu(index=i, vendor="amd", name=str(asic.get("market_name", "AMD GPU")),
                            memory_total_mib=total >> 20, memory_free_mib=(total - used) >> 20,
                            gfx=str(asic.get("target_graphics_version") or "") or None))
    finally:
        amdsmi.amdsmi_shut_down()
    return Inventory("amdsmi", tuple(gpus))
