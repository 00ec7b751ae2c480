"""Replica layout: how many vLLM replicas one host runs for a model, at which tensor-parallel size, on
which GPUs, and why.

Both gpt-oss models fit one datacenter GPU, so a host scales with independent replicas (one vLLM process
each, pinned to its GPUs, on its own port, behind a router), not with one process spanning every GPU.
Flow: the devices one process can be given (a whole GPU, or one MIG slice: a CUDA context sees one slice,
so never tensor parallelism across slices) -> those whose memory holds one rank of the profile's need and
whose free memory vLLM will accept at start -> disjoint groups of `tensor_parallel` whole GPUs in index
order -> all of them, or the number of replicas asked for. Pure: check.py hands in the devices and the
memory need it computed for the chosen profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptossctl.errors import UsageError
from gptossctl.hardware.requirements import GIB, MIB, MemoryNeed

MAX_CONTEXT = 131072  # gpt-oss: 128k positions; vLLM refuses a longer max-model-len
TP_SIZES = (1, 2, 4, 8)
MAX_REPLICAS = 1024  # a host with more GPU slices than this does not exist; a bigger number is a typo
MAX_CONCURRENCY = 4096  # gpt-oss has 8 KV heads: a rank must hold whole heads


@dataclass(frozen=True)
class LayoutRequest:
    """What an operator asked for on top of a profile. Overrides are accepted only within what fits;
    values that cannot mean anything (0 replicas, TP 3, a context beyond 128k) are usage errors."""

    replicas: int | None = None
    tensor_parallel: int | None = None
    max_model_len: int | None = None  # the context each replica must serve, instead of the profile's
    concurrency: int | None = None  # sequences of max_model_len each replica must hold, instead of the profile's

    def __post_init__(self) -> None:
        for flag, value, most in (("--replicas", self.replicas, MAX_REPLICAS),
                                  ("--concurrency", self.concurrency, MAX_CONCURRENCY),
                                  ("--max-model-len", self.max_model_len, None)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} {value}: must be at least 1", code="hw.bad_layout",
                                 hint=f"give a positive {flag}, or leave it out for the proposed layout")
            if value is not None and most is not None and value > most:
                raise UsageError(f"{flag} {value}: more than any host runs ({most})", code="hw.bad_layout",
                                 hint=f"give at most {most}, or leave it out for the proposed layout")
        if self.tensor_parallel is not None and self.tensor_parallel not in TP_SIZES:
            raise UsageError(f"--tp {self.tensor_parallel}: gpt-oss runs at tensor parallel 1, 2, 4 or 8",
                             code="hw.bad_layout", hint="gpt-oss has 8 KV heads: use --tp 1, 2, 4 or 8")
        if self.max_model_len is not None and self.max_model_len > MAX_CONTEXT:
            raise UsageError(f"--max-model-len {self.max_model_len}: gpt-oss has {MAX_CONTEXT} positions",
                             code="hw.bad_layout", hint=f"use at most {MAX_CONTEXT}")

    @property
    def overrides(self) -> list[str]:
        named = (("--replicas", self.replicas), ("--tp", self.tensor_parallel),
                 ("--max-model-len", self.max_model_len), ("--concurrency", self.concurrency))
        return [f"{flag} {value}" for flag, value in named if value is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "tensor_parallel_size": self.tensor_parallel,
                "max_model_len": self.max_model_len, "concurrency": self.concurrency}


NO_OVERRIDES = LayoutRequest()


@dataclass(frozen=True)
class Device:
    """What one vLLM rank can be given: a whole GPU, or one MIG slice of it."""

    gpu: int
    memory_mib: int
    free_mib: int | None = None
    mig_device: str | None = None  # the slice's name when this is one MIG slice
    uuid: str | None = None

    @property
    def label(self) -> str:
        return f"GPU {self.gpu}" + (f" ({self.mig_device})" if self.mig_device else "")


@dataclass(frozen=True)
class Replica:
    index: int
    gpus: tuple[int, ...]  # nvidia-smi indices (PCI bus order)
    uuids: tuple[str, ...] = ()  # when every GPU's UUID is known: stable across reboots and reordering
    mig_device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "gpus": list(self.gpus), "gpu_uuids": list(self.uuids),
                "mig_device": self.mig_device}


@dataclass(frozen=True)
class Layout:
    model: str
    profile: str
    tensor_parallel: int
    replicas: tuple[Replica, ...]
    max_replicas: int  # how many this host could run at this tensor-parallel size
    reason: str
    max_model_len: int
    concurrency: int  # per replica
    request: LayoutRequest = NO_OVERRIDES
    unused: tuple[str, ...] = ()  # GPUs (or slices) no replica uses, and why

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "profile": self.profile, "replicas": len(self.replicas),
                "tensor_parallel_size": self.tensor_parallel, "max_replicas": self.max_replicas,
                "replica_gpus": [list(r.gpus) for r in self.replicas],
                "assignments": [r.to_dict() for r in self.replicas], "max_model_len": self.max_model_len,
                "concurrency_per_replica": self.concurrency, "reason": self.reason,
                "unused": list(self.unused), "overrides": self.request.to_dict()}


class LayoutDoesNotFit(Exception):
    """No layout satisfies the request on these devices; `reason` says why in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def usable_devices(devices: Sequence[Device], *, tensor_parallel: int, need: MemoryNeed,
                   utilization: float) -> tuple[list[Device], list[str]]:
    """The devices that can hold one rank, and a sentence for each one that cannot."""
    usable: list[Device] = []
    left: list[str] = []
    for d in sorted(devices, key=lambda d: (d.gpu, d.mig_device or "")):
        budget = int(d.memory_mib * MIB * utilization)
        wanted_free = int(d.memory_mib * utilization)
        if d.mig_device and tensor_parallel > 1:
            left.append(f"{d.label}: a MIG slice serves alone, never in a tensor-parallel group")
        elif need.total > budget:
            left.append(f"{d.label}: {need.total / GIB:.1f} GiB per rank exceeds its {budget / GIB:.1f} GiB budget")
        elif d.mig_device is None and d.free_mib is not None and d.free_mib < wanted_free:
            # vLLM refuses to start unless free memory >= total x gpu-memory-utilization.
            left.append(f"{d.label}: {d.memory_mib - d.free_mib} MiB already in use, vLLM needs {wanted_free} MiB "
                        "free at start (stop the other processes)")
        else:
            usable.append(d)
    return usable, left


def _groups(usable: list[Device], tensor_parallel: int) -> tuple[list[tuple[Device, ...]], list[str]]:
    """Disjoint groups in index order: neighbouring indices share a PCIe switch or NVLink domain on
    common servers, and on NVSwitch systems every grouping is equal."""
    if tensor_parallel == 1:
        return [(d,) for d in usable], []
    whole = [d for d in usable if d.mig_device is None]
    n = len(whole) // tensor_parallel * tensor_parallel
    groups = [tuple(whole[i:i + tensor_parallel]) for i in range(0, n, tensor_parallel)]
    return groups, [f"{d.label}: left over after groups of {tensor_parallel}" for d in whole[n:]]


def propose_layout(devices: Sequence[Device], *, model: str, profile: str, tensor_parallel: int,
                   need: MemoryNeed, utilization: float, max_model_len: int, concurrency: int,
                   request: LayoutRequest = NO_OVERRIDES, smaller: MemoryNeed | None = None) -> Layout:
    """Replicas at `tensor_parallel` on these devices (the fit chose the size: the smallest whose per-GPU
    need fits, or the one asked for). Raises LayoutDoesNotFit when the request asks for more than fits."""
    usable, unused = usable_devices(devices, tensor_parallel=tensor_parallel, need=need, utilization=utilization)
    groups, leftover = _groups(usable, tensor_parallel)
    unused += leftover
    if not groups:
        raise LayoutDoesNotFit(f"no {tensor_parallel} GPU(s) hold one replica: " + "; ".join(unused))
    wanted = request.replicas or len(groups)
    if wanted > len(groups):
        raise LayoutDoesNotFit(
            f"--replicas {wanted} at tensor parallel {tensor_parallel} needs {wanted * tensor_parallel} GPU(s) "
            f"that hold a rank; this host has room for {len(groups)} replica(s)"
            + (f" ({'; '.join(unused)})" if unused else ""))
    unused += [f"{g[0].label if len(g) == 1 else 'GPUs ' + ', '.join(str(d.gpu) for d in g)}: spare "
               f"(--replicas {wanted})" for g in groups[wanted:]]
    replicas = tuple(
        Replica(i, tuple(d.gpu for d in g), tuple(d.uuid for d in g if d.uuid) if all(d.uuid for d in g) else (),
                g[0].mig_device)
        for i, g in enumerate(groups[:wanted]))
    reason = _reason(replicas, tensor_parallel=tensor_parallel, need=need, smaller=smaller, request=request,
                     max_model_len=max_model_len, concurrency=concurrency, possible=len(groups))
    return Layout(model, profile, tensor_parallel, replicas, len(groups), reason, max_model_len, concurrency,
                  request, tuple(unused))


def _reason(replicas: tuple[Replica, ...], *, tensor_parallel: int, need: MemoryNeed, smaller: MemoryNeed | None,
            request: LayoutRequest, max_model_len: int, concurrency: int, possible: int) -> str:
    shape = f"{len(replicas)} x TP{tensor_parallel}"
    workload = f"{max_model_len} tokens x {concurrency} sequence(s) per replica"
    if any(r.mig_device for r in replicas):
        why = "one replica per MIG slice that holds the model (no tensor parallelism across slices)"
    elif request.tensor_parallel is not None:
        why = f"tensor parallel {tensor_parallel} as asked (--tp)"
    elif smaller is not None:
        why = (f"at TP{smaller.tensor_parallel} a replica {smaller.describe()}, so each replica spans "
               f"{tensor_parallel} GPUs")
    else:
        why = "one GPU per replica: independent replicas serve the most requests" if tensor_parallel == 1 else \
            f"the smallest tensor-parallel size this profile allows is {tensor_parallel}"
    spare = f"; {len(replicas)} of {possible} possible (--replicas)" if request.replicas else ""
    return f"{shape}: {why}; {need.describe()} ({workload}){spare}"


def host_layout(*, model: str, profile: str, max_model_len: int, concurrency: int,
                request: LayoutRequest = NO_OVERRIDES) -> Layout:
    """A CPU profile: one replica on the host (vLLM's CPU backend already uses every core it is given). More
    only when asked (--replicas): they share the cores, which serves tests and demos of the router, not speed."""
    if (request.tensor_parallel or 1) > 1:
        raise LayoutDoesNotFit("a CPU profile serves at tensor parallel 1")
    n = request.replicas or 1
    reason = "1 x TP1 on the host CPU (no GPU)" if n == 1 else \
        f"{n} x TP1 on the host CPU as asked (--replicas): they share the cores, for tests and demos"
    return Layout(model, profile, 1, tuple(Replica(i, ()) for i in range(n)), n, reason, max_model_len,
                  concurrency, request)
