"""What a machine has: GPUs as the driver reports them, and the host facts an install depends on.

Probes (NVML, captured nvidia-smi/rocm-smi/amd-smi output, the host itself) all produce these frozen
values; nothing downstream knows where a number came from except through `source`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Vendor = Literal["nvidia", "amd"]


@dataclass(frozen=True)
class MigSlice:
    name: str  # "3g.40gb", or "mig device N" when the capture does not say
    memory_mib: int


@dataclass(frozen=True)
class Gpu:
    index: int
    vendor: Vendor
    name: str
    memory_total_mib: int | None  # what the driver reports: an H100 80GB says 81559
    memory_free_mib: int | None = None
    compute_capability: tuple[int, int] | None = None  # NVIDIA only
    cc_inferred: bool = False  # True when read off the product name, not reported
    gfx: str | None = None  # AMD architecture, e.g. gfx942
    mig_enabled: bool | None = None
    mig_slices: tuple[MigSlice, ...] = ()
    persistence_mode: bool | None = None
    pci_bus_id: str | None = None
    uuid: str | None = None

    @property
    def cc_text(self) -> str | None:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}" if self.compute_capability else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = self.cc_text
        return d


@dataclass(frozen=True)
class HostFacts:
    arch: str
    glibc: str | None
    python: str
    ram_total_mib: int | None
    disk_free_bytes: dict[str, int] = field(default_factory=dict)  # path -> free bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Inventory:
    source: str  # "nvml", "nvidia-smi-xml:FILE", "cpu", ...
    gpus: tuple[Gpu, ...]
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # the highest CUDA the driver supports, e.g. "13.0"
    host: HostFacts | None = None  # None when reviewing another machine's capture
    notes: tuple[str, ...] = ()

    @property
    def driver_major(self) -> int | None:
        m = re.match(r"(\d+)", self.driver_version or "")
        return int(m.group(1)) if m else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "gpus": [g.to_dict() for g in self.gpus],
            "host": self.host.to_dict() if self.host else None,
            "notes": list(self.notes),
        }


# Product name -> compute capability, for captures that do not report it (nvidia-smi -q -x).
# Most specific first. Sources: NVIDIA's CUDA GPU list.
_CC_BY_NAME: tuple[tuple[str, tuple[int, int]], ...] = (
    (r"\b(GB|B)300\b", (10, 3)),
    (r"\b(GB|B)(200|100)\b", (10, 0)),
    (r"RTX PRO \d+ Blackwell|RTX 50\d0|Blackwell", (12, 0)),
    (r"\b(GH|H)(100|200|800|20)\b", (9, 0)),
    (r"\bL40S?\b|\bL4\b|\bL20\b|RTX 40\d0|Ada Generation|RTX \d000 SFF Ada", (8, 9)),
    (r"\bA(100|800|30)\b", (8, 0)),
    (r"\bA(10G?|40|16|2)\b|RTX A\d{4}|RTX 30\d0|\bA\d000\b", (8, 6)),
    (r"\bT4\b|RTX 20\d0|GTX 16\d0|Quadro RTX|TITAN RTX", (7, 5)),
    (r"V100|TITAN V\b", (7, 0)),
    (r"P100", (6, 0)),
    (r"P40\b|\bP4\b|P4-|GTX 10\d0|Quadro P\d+|GT 1030|TITAN X", (6, 1)),
    (r"\bK80\b", (3, 7)),
    (r"\bK40|\bK20", (3, 5)),
    (r"GT 730", (3, 5)),
)
# The architecture field of newer captures, when the name is unknown: the lowest member of the family,
# so an inference never claims a faster kernel path than the GPU has.
_CC_BY_ARCH = {
    "blackwell": (10, 0), "hopper": (9, 0), "ada lovelace": (8, 9), "ampere": (8, 0),
    "turing": (7, 5), "volta": (7, 0), "pascal": (6, 0), "maxwell": (5, 0), "kepler": (3, 0),
}


def infer_compute_capability(name: str, architecture: str | None = None) -> tuple[int, int] | None:
    for pattern, cc in _CC_BY_NAME:
        if re.search(pattern, name, re.IGNORECASE):
            return cc
    if architecture:
        return _CC_BY_ARCH.get(architecture.strip().lower())
    return None
