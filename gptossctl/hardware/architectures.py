"""The GPU architectures `hw check` names: the kernel path vLLM takes on each, or why none serves gpt-oss there.

One table, read by the `gpu.arch` check. The shipped profiles are held to it
(tests/hardware/test_architectures.py): an architecture the table accepts has a profile that fits it, one it
refuses has none, and a refusal says why and what to do instead. Facts: ../shared/REFERENCE.md, vLLM 0.33.0
(CUDA wheels compiled for sm_75, 80, 86, 89, 90, 100 and 120; the ROCm wheels for gfx942 and gfx950).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail"]
VLLM_LINE = "0.33"
COMPILED_TARGETS = ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0))  # vLLM 0.33.0's CUDA wheels
MIN_NVIDIA = (7, 5)  # below this vLLM ships no kernels at all
_TARGETS = ", ".join(f"sm_{a}{b}" for a, b in COMPILED_TARGETS)
_SLOW = "Ampere/Ada, Triton attention + Marlin MoE (supported, slower than Hopper or Blackwell)"


@dataclass(frozen=True)
class Architecture:
    key: str  # "sm_90", "gfx942"
    family: str
    examples: str
    status: Status  # the gpu.arch check's verdict: fail is a refusal
    path: str  # the kernel path vLLM takes there, or why there is none
    remedy: str | None = None  # what to do instead (a refusal always has one)


KNOWN: dict[str, Architecture] = {a.key: a for a in (
    Architecture("sm_75", "Turing", "T4, RTX 20", "fail", "Turing has no MXFP4 MoE kernel path for gpt-oss",
                 "gpt-oss needs sm_80 or newer (A100, A10, L4, L40S, H100, B200)"),
    Architecture("sm_80", "Ampere", "A100, A800, A30", "warn", _SLOW),
    Architecture("sm_86", "Ampere", "A10, A40, RTX A6000, RTX 30", "warn", _SLOW),
    Architecture("sm_89", "Ada", "L40S, L4, RTX 6000 Ada, RTX 40", "warn", _SLOW),
    Architecture("sm_90", "Hopper", "H100, H200, GH200", "pass",
                 "Hopper fast path (FlashAttention-3 with sinks, Triton MXFP4 MoE)"),
    Architecture("sm_100", "Blackwell", "B200, GB200", "pass",
                 "Blackwell fast path (FlashInfer TRT-LLM attention and MoE)"),
    Architecture("sm_103", "Blackwell Ultra", "B300, GB300", "fail",
                 f"Blackwell Ultra (B300/GB300): vLLM {VLLM_LINE}'s wheels are compiled for {_TARGETS}, not sm_103, "
                 "and the Blackwell fast path (FlashInfer TRT-LLM attention and MoE, fp8 KV) is built for sm_100 "
                 "only: no profile is offered rather than one that fails at its first start",
                 "pack a vLLM build compiled for sm_103 (10.3a), validate it on the GPU, then add a profile matching "
                 "compute capability 10.3 (start from blackwell-120b / blackwell-20b)"),
    Architecture("sm_120", "Blackwell (workstation)", "RTX PRO 6000 Blackwell, RTX 5090", "warn",
                 "workstation Blackwell, Triton attention + Marlin MoE (works; not the datacenter fast path)"),
    Architecture("gfx942", "CDNA 3", "MI300X, MI325X", "pass", "MI300X/MI325X: ROCm wheels with the AITER attention backend"),
    Architecture("gfx950", "CDNA 4", "MI355X, MI350X", "warn",
                 "MI355X: needs the amd/gpt-oss-120b-w-mxfp4-a-fp8 checkpoint"),
)}


def nvidia(cc: tuple[int, int]) -> Architecture:
    """The table's entry for a compute capability; a refusal for one the table does not list."""
    key = f"sm_{cc[0]}{cc[1]}"
    if key in KNOWN:
        return KNOWN[key]
    if cc < MIN_NVIDIA:
        return Architecture(key, "pre-Turing", "", "fail", "vLLM ships no kernels below sm_75",
                            "use an Ampere (A100/A10/L4), Ada (L40S), Hopper (H100/H200) or Blackwell (B200) GPU")
    return Architecture(key, "unlisted", "", "fail",
                        f"no profile is validated for {key} and vLLM {VLLM_LINE}'s wheels are not compiled for it "
                        f"({_TARGETS})",
                        "serve on a GPU `gptossctl profiles list` names, or pack a vLLM build compiled for "
                        f"{key}, validate it, and add a profile for it")


def amd(gfx: str | None) -> Architecture:
    if gfx in KNOWN:
        return KNOWN[gfx]
    return Architecture(gfx or "unknown", "unlisted", "", "fail",
                        "no gpt-oss path in vLLM for this AMD architecture",
                        "gpt-oss on AMD needs Instinct MI300X/MI325X (gfx942) or MI355X (gfx950)")
