"""How much memory serving a model needs: weights + KV cache + runtime overhead, per GPU.

Computed, never compared with marketing labels: an H100 "80GB" reports 81559 MiB (79.6 GiB), so a
check written as ">= 80 GB" would reject every H100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptossctl.hardware.modelfacts import PUBLISHED, ModelFacts

GIB = 1 << 30
MIB = 1 << 20
__all__ = ["GIB", "KNOWN_MODELS", "MIB", "MemoryNeed", "ModelFacts", "kv_cache_bytes", "memory_need"]


# The published models and the embedded tiny one, by name (hardware.modelfacts: any other gpt-oss is sized from
# its own config.json).
KNOWN_MODELS: dict[str, ModelFacts] = PUBLISHED


def kv_cache_bytes(model: ModelFacts, *, context_len: int, concurrency: int, dtype_bytes: int) -> int:
    """KV for `concurrency` sequences of `context_len` tokens. Sliding-window layers hold at most
    `sliding_window` tokens per sequence, whatever the context."""
    per = model.kv_bytes_per_token_layer(dtype_bytes)
    per_seq = (model.full_attention_layers * context_len
               + model.sliding_layers * min(context_len, model.sliding_window)) * per
    return per_seq * concurrency


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes one GPU (of `tensor_parallel`) must hold, and the budget it has for them."""

    tensor_parallel: int
    weights: int
    kv_cache: int
    overhead: int
    budget: int  # total memory x gpu-memory-utilization
    where: str = "GPU"  # "host" for the CPU profile, whose budget is RAM

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    @property
    def short_by(self) -> int:
        return max(0, self.total - self.budget)

    def describe(self) -> str:
        return (f"needs {self.total / GIB:.1f} GiB per {self.where} (weights {self.weights / GIB:.1f} + KV "
                f"{self.kv_cache / GIB:.1f} + overhead {self.overhead / GIB:.1f}) of a {self.budget / GIB:.1f} GiB budget")

    def to_dict(self) -> dict[str, Any]:
        return {"tensor_parallel": self.tensor_parallel, "weights_bytes": self.weights,
                "kv_cache_bytes": self.kv_cache, "overhead_bytes": self.overhead, "total_bytes": self.total,
                "budget_bytes": self.budget, "fits": self.fits}


def memory_need(model: ModelFacts, *, memory_mib: int, utilization: float, context_len: int, concurrency: int,
                kv_dtype_bytes: int, overhead_bytes: int, tensor_parallel: int = 1, where: str = "GPU") -> MemoryNeed:
    """Per-GPU need with tensor parallelism: weights and KV heads are split across the ranks; the
    runtime overhead (CUDA context, activations, CUDA graphs) is paid on every rank."""
    kv = kv_cache_bytes(model, context_len=context_len, concurrency=concurrency, dtype_bytes=kv_dtype_bytes)
    return MemoryNeed(
        tensor_parallel=tensor_parallel,
        weights=-(-model.weights_bytes // tensor_parallel),
        kv_cache=-(-kv // tensor_parallel),
        overhead=overhead_bytes,
        budget=int(memory_mib * MIB * utilization),
        where=where,
    )
