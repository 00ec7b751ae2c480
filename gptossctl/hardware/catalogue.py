"""The profile catalogue: every profile, the hardware it matches and the memory it needs per model of its
class, said without probing any GPU (`profiles list` on the connected workstation that packs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptossctl.hardware.modelfacts import ModelFacts
from gptossctl.hardware.profiles import Profile
from gptossctl.hardware.requirements import GIB, MIB, memory_need


@dataclass(frozen=True)
class Requirement:
    """What one model of the profile's class needs of each GPU (or of the host, for a CPU profile)."""

    model: str
    model_class: str
    tensor_parallel: int
    total_bytes: int  # weights / tp + KV / tp + overhead
    min_memory_mib: int  # total / gpu-memory-utilization: the smallest GPU (or RAM) that holds it
    where: str

    def to_dict(self) -> dict[str, Any]:
        key = "min_host_ram_mib" if self.where == "host" else "min_gpu_memory_mib"
        return {"model": self.model, "class": self.model_class, "tensor_parallel": self.tensor_parallel,
                "total_bytes": self.total_bytes, key: self.min_memory_mib}

    def describe(self) -> str:
        per = "of host RAM" if self.where == "host" else f"per GPU at TP {self.tensor_parallel}"
        return f"{self.model}: {self.min_memory_mib / 1024:.1f} GiB {per}"


@dataclass(frozen=True)
class CatalogueEntry:
    profile: Profile
    requirements: tuple[Requirement, ...]

    def to_dict(self) -> dict[str, Any]:
        p = self.profile
        return {"profile": p.name, "classes": list(p.model_classes), "description": p.description,
                "priority": p.priority, "match": p.match.model_dump(mode="json"), "vllm_versions": p.vllm.versions,
                "max_model_len": p.context_len, "concurrency": p.sizing.concurrency,
                "gpu_memory_utilization": p.utilization, "performance": p.performance,
                "requirements": [r.to_dict() for r in self.requirements]}


@dataclass(frozen=True)
class Catalogue:
    why: str  # why no machine was judged (no GPU probe here)
    entries: tuple[CatalogueEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"probe": None, "why": self.why, "profiles": [e.to_dict() for e in self.entries]}


def requirements(profile: Profile, model: ModelFacts) -> list[Requirement]:
    where = "host" if profile.match.vendor == "cpu" else "GPU"
    sizes = (1,) if where == "host" else profile.match.tensor_parallel_sizes
    out = []
    for tp in sizes:
        need = memory_need(model, memory_mib=0, utilization=profile.utilization, context_len=profile.context_len,
                           concurrency=profile.sizing.concurrency, kv_dtype_bytes=profile.kv_dtype_bytes,
                           overhead_bytes=int(profile.sizing.overhead_gib * GIB), tensor_parallel=tp, where=where)
        out.append(Requirement(model.name, model.model_class, tp, need.total,
                               -(-need.total // int(MIB * profile.utilization)), where))
    return out


def profile_catalogue(profiles: Sequence[Profile], models: Sequence[ModelFacts], *, why: str) -> Catalogue:
    """Every profile with what each model of its class (among `models`) needs at each tensor-parallel size."""
    entries = [CatalogueEntry(p, tuple(r for m in models if p.serves(m.model_class) for r in requirements(p, m)))
               for p in profiles]
    return Catalogue(why, tuple(entries))
