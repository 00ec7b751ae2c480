"""Live AMD inventory through amdsmi (ROCm's Python library), where it is installed on the target."""

from __future__ import annotations

from typing import Any

from gptossctl.errors import EnvironmentNotReady
from gptossctl.hardware.inventory import Gpu, Inventory


def probe_amdsmi() -> Inventory:
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
