"""Live NVIDIA inventory through NVML (nvidia-ml-py, import name pynvml)."""

from __future__ import annotations

from typing import Any

from gptossctl.errors import EnvironmentNotReady
from gptossctl.hardware.inventory import Gpu, Inventory, MigSlice

_MIB = 1 << 20


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def probe_nvml() -> Inventory:
    """Read every GPU; EnvironmentNotReady when there is no NVIDIA driver to ask."""
    try:
        import pynvml
    except ImportError as exc:
        raise EnvironmentNotReady("nvidia-ml-py is not installed", code="hw.nvml_missing",
                                  hint="install gptossctl with its dependencies") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise EnvironmentNotReady(
            f"NVML is not available here ({exc})", code="hw.no_nvml",
            hint="run on the GPU host with the NVIDIA driver loaded, or review a capture with "
                 "--nvidia-smi-xml/--nvidia-smi-csv (or --rocm-smi-json for AMD)") from None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_raw = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        cuda = f"{cuda_raw // 1000}.{(cuda_raw % 1000) // 10}"
        gpus = tuple(_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    finally:
        pynvml.nvmlShutdown()
    return Inventory("nvml", gpus, driver, cuda)


def _optional(fn: Any, *args: Any) -> Any:
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:  # not supported on this GPU (GeForce, vGPU): leave it unknown
        return None


def _gpu(pynvml: Any, index: int) -> Gpu:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
    mig = _optional(pynvml.nvmlDeviceGetMigMode, h)
    mig_on = None if mig is None else mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE
    slices: list[MigSlice] = []
    if mig_on:
        for j in range(_optional(pynvml.nvmlDeviceGetMaxMigDeviceCount, h) or 0):
            mh = _optional(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, h, j)
            if mh is not None:
                slices.append(MigSlice(f"mig device {j}", pynvml.nvmlDeviceGetMemoryInfo(mh).total // _MIB))
    persistence = _optional(pynvml.nvmlDeviceGetPersistenceMode, h)
    pci = _optional(pynvml.nvmlDeviceGetPciInfo, h)
    return Gpu(
        index=index, vendor="nvidia", name=_text(pynvml.nvmlDeviceGetName(h)),
        memory_total_mib=mem.total // _MIB, memory_free_mib=mem.free // _MIB,
        compute_capability=(major, minor), mig_enabled=mig_on, mig_slices=tuple(slices),
        persistence_mode=None if persistence is None else persistence == pynvml.NVML_FEATURE_ENABLED,
        pci_bus_id=_text(pci.busId) if pci is not None else None, uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
    )
