"""Will this machine serve gpt-oss, with which profile, and why not the others.

Flow: inventory (probes) -> general checks (GPUs, driver vs the bundle's CUDA line, MIG, persistence,
host) -> for every profile of the model: eligible GPUs (vendor, compute capability or gfx, MIG) ->
smallest tensor-parallel size whose per-GPU memory need fits the budget -> free memory at start ->
the replica layout on every GPU (or MIG slice) that holds a rank (hardware.layout) -> the fitting
profile with the highest priority is chosen. Overrides (replicas, tensor parallel, context, concurrency)
narrow what is tried: a profile fits only if it fits them. Each check is pass, warn or fail with a
message that says what to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gptossctl.errors import Finding
from gptossctl.hardware import architectures
from gptossctl.hardware.inventory import Gpu, Inventory
from gptossctl.hardware.layout import NO_OVERRIDES, Device, Layout, LayoutDoesNotFit, LayoutRequest, host_layout, propose_layout
from gptossctl.hardware.modelfacts import loaded_weights_bytes
from gptossctl.hardware.profiles import Profile
from gptossctl.hardware.requirements import GIB, KNOWN_MODELS, MIB, MemoryNeed, ModelFacts, memory_need

Status = Literal["pass", "warn", "fail"]
DEFAULT_CUDA_LINE = "13.0"  # vLLM 0.33 wheels: CUDA 13 runtime
DEFAULT_VLLM = "0.33.0"
MIN_GLIBC = (2, 28)  # manylinux_2_28 wheels
PYTHONS = ((3, 11), (3, 14))


@dataclass(frozen=True)
class Check:
    id: str
    status: Status
    subject: str
    message: str
    remedy: str | None = None
    gpus: tuple[int, ...] = ()  # the GPUs it was found on: said once for all of them

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "subject": self.subject, "message": self.message,
                "remedy": self.remedy, "gpus": list(self.gpus)}


def gpu_span(indexes: Iterable[int]) -> str:
    """GPU indexes as people write them: 0-7, or 0, 2-3."""
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


@dataclass(frozen=True)
class GpuReason:
    """Why a profile does not fit, said once for the GPUs it applies to."""

    gpus: tuple[int, ...]
    name: str  # the product name the GPUs share
    text: str

    @property
    def message(self) -> str:
        return f"GPU {gpu_span(self.gpus)} ({self.name}): {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": list(self.gpus), "message": self.message}


def group_by_gpu(found: Iterable[tuple[Gpu, str]]) -> list[GpuReason]:
    """(GPU, what holds for it) pairs, one GpuReason per distinct (product name, text), in first-seen order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for gpu, text in found:
        groups.setdefault((gpu.name, text), []).append(gpu.index)
    return [GpuReason(tuple(ix), name, text) for (name, text), ix in groups.items()]


_INDEXES = "<gpu indexes>"  # in a remedy: the merged check's GPUs, as nvidia-smi -i takes them (0,1,2)


def _merge_gpu_checks(checks: list[tuple[Gpu, Check]]) -> list[Check]:
    """The same finding on several GPUs (same product name) becomes one check naming all of them."""
    groups: dict[tuple[str, str, str, str, str | None], list[tuple[Gpu, Check]]] = {}
    for g, c in checks:
        groups.setdefault((c.id, c.status, g.name, c.message, c.remedy), []).append((g, c))
    out = []
    for found in groups.values():
        g, c = found[0]
        gpus = tuple(gpu.index for gpu, _c in found)
        remedy = c.remedy.replace(_INDEXES, ",".join(map(str, gpus))) if c.remedy else None
        out.append(replace(c, subject=f"GPU {gpu_span(gpus)} ({g.name})", remedy=remedy, gpus=gpus))
    return out


@dataclass(frozen=True)
class ProfileFit:
    profile: Profile
    fits: bool
    tensor_parallel: int | None = None
    gpus: tuple[int, ...] = ()
    need: MemoryNeed | None = None
    reasons: tuple[str, ...] = ()  # why it does not fit (empty when it does)
    warnings: tuple[str, ...] = ()
    layout: Layout | None = None  # the replicas this host runs with the profile (when it fits)
    gpu_reasons: tuple[GpuReason, ...] = ()  # the reasons that hold for particular GPUs (also in `reasons`)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "fits": self.fits, "priority": self.profile.priority,
                "tensor_parallel": self.tensor_parallel, "gpus": list(self.gpus),
                "memory": self.need.to_dict() if self.need else None, "reasons": list(self.reasons),
                "gpu_reasons": [r.to_dict() for r in self.gpu_reasons],
                "warnings": list(self.warnings), "performance": self.profile.performance,
                "layout": self.layout.to_dict() if self.layout else None}


@dataclass(frozen=True)
class Requirements:
    """What the bundle (or the defaults for vLLM 0.33) asks of the target."""

    cuda_line: str = DEFAULT_CUDA_LINE
    vllm_version: str = DEFAULT_VLLM
    weights_bytes: int | None = None  # from the bundle manifest when one is given
    bundle_bytes: int | None = None
    target_arch: str | None = None


@dataclass(frozen=True)
class ModelReport:
    model: str
    checks: tuple[Check, ...]
    fits: tuple[ProfileFit, ...]
    chosen: ProfileFit | None
    reason: str
    facts: ModelFacts | None = None  # what it was sized from (its class, shape, quantisation and bytes)

    @property
    def layout(self) -> Layout | None:
        return self.chosen.layout if self.chosen else None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "chosen": self.chosen.profile.name if self.chosen else None,
                "tensor_parallel": self.chosen.tensor_parallel if self.chosen else None,
                "reason": self.reason, "facts": self.facts.to_dict() if self.facts else None,
                "layout": self.layout.to_dict() if self.layout else None,
                "checks": [c.to_dict() for c in self.checks], "profiles": [f.to_dict() for f in self.fits]}


@dataclass(frozen=True)
class HardwareReport:
    inventory: Inventory
    models: tuple[ModelReport, ...]
    requirements: Requirements = field(default_factory=Requirements)

    @property
    def ok(self) -> bool:
        return any(m.chosen is not None for m in self.models)

    @property
    def chosen(self) -> ProfileFit | None:
        return next((m.chosen for m in self.models if m.chosen), None)

    @property
    def reason(self) -> str:
        return "; ".join(f"{m.model}: {m.reason}" for m in self.models)

    @property
    def findings(self) -> list[Finding]:
        """When nothing fits: every failed check with its remedy, and why each profile does not fit."""
        if self.ok:
            return []
        out = [Finding(f"hw.{c.id}", c.subject, c.message, hint=c.remedy)
               for m in self.models for c in m.checks if c.status == "fail"]
        out += [Finding("hw.profile_does_not_fit", f"{m.model}/{f.profile.name}", "; ".join(f.reasons),
                        hint="see 'gptossctl profiles list' for every profile and what it needs")
                for m in self.models for f in m.fits if not f.fits]
        return out or [Finding("hw.no_profile", "host", self.reason, hint="review the checks above")]

    @property
    def layout(self) -> Layout | None:
        """The layout of the first model that fits (the one `chosen` names)."""
        return next((m.layout for m in self.models if m.layout), None)

    def to_dict(self) -> dict[str, Any]:
        return {"inventory": self.inventory.to_dict(), "requirements": self.requirements.__dict__,
                "layout": self.layout.to_dict() if self.layout else None,
                "models": [m.to_dict() for m in self.models]}


# ---------------------------------------------------------------- general checks


def required_driver(cuda_line: str) -> int:
    """Minimum NVIDIA driver for a CUDA runtime line (NVIDIA's CUDA compatibility table)."""
    major, minor = (int(x) for x in cuda_line.split(".")[:2])
    if major >= 13:
        return 580
    if major == 12:
        return 570 if minor >= 8 else 525
    return 450


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or ""))


def gpu_arch_check(gpu: Gpu) -> Check:
    subject = f"GPU {gpu.index} ({gpu.name})"
    if gpu.vendor == "amd":
        arch = architectures.amd(gpu.gfx)
        text = gpu.gfx or "AMD architecture unknown"
    elif gpu.compute_capability is None:
        return Check("gpu.arch", "warn", subject, "compute capability unknown and not inferable from the name",
                     "capture with nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv")
    else:
        arch = architectures.nvidia(gpu.compute_capability)
        text = arch.key + (" (inferred from the product name)" if gpu.cc_inferred else "")
    return Check("gpu.arch", arch.status, subject, f"{text}: {arch.path}", arch.remedy)


def general_checks(inv: Inventory, model: ModelFacts, req: Requirements) -> list[Check]:
    checks: list[Check] = []
    if model.model_class != "tiny":
        if not inv.gpus:
            checks.append(Check("gpu.count", "fail", "host", f"no GPU found ({inv.source})",
                                "check the driver (nvidia-smi / rocm-smi) or review a capture from the target"))
        else:
            checks.append(Check("gpu.count", "pass", "host", f"{len(inv.gpus)} GPU(s) from {inv.source}"))
        checks += _merge_gpu_checks([(g, gpu_arch_check(g)) for g in inv.gpus])
        checks += _driver_checks(inv, req)
        per_gpu: list[tuple[Gpu, Check]] = []
        for g in inv.gpus:
            subject = f"GPU {g.index} ({g.name})"
            if g.memory_total_mib is None:
                per_gpu.append((g, Check("gpu.memory_unknown", "fail", subject, "the capture reports no memory size",
                                         "capture again with nvidia-smi -q -x on a supported driver")))
            if g.mig_enabled:
                slices = ", ".join(f"{s.name} {s.memory_mib} MiB" for s in g.mig_slices) or "sizes unknown"
                per_gpu.append((g, Check("gpu.mig", "warn", subject,
                                    f"MIG is enabled ({slices}): vLLM sees one slice per process, no tensor "
                                    "parallelism across slices; gpt-oss-120b fits no slice",
                                    f"to use the whole GPU: nvidia-smi -i {_INDEXES} -mig 0, then reset the GPU "
                                    f"(nvidia-smi -i {_INDEXES} -r) or reboot")))
            if g.vendor == "nvidia" and g.persistence_mode is False:
                per_gpu.append((g, Check("gpu.persistence", "warn", subject, "persistence mode is off",
                                         "systemctl enable --now nvidia-persistenced (the unit orders itself after it)")))
        checks += _merge_gpu_checks(per_gpu)
    if inv.host is not None:
        checks += _host_checks(inv, model, req)
    return checks


def _driver_checks(inv: Inventory, req: Requirements) -> list[Check]:
    if not any(g.vendor == "nvidia" for g in inv.gpus):
        return []
    need = required_driver(req.cuda_line)
    major = inv.driver_major
    if major is None:
        return [Check("driver.version", "warn", "driver", "driver version unknown from this capture",
                      f"the bundle's CUDA {req.cuda_line} wheels need driver >= {need}")]
    if major < need:
        return [Check("driver.version", "fail", "driver",
                      f"driver {inv.driver_version} < {need} needed by the bundle's CUDA {req.cuda_line} wheels",
                      f"upgrade the NVIDIA driver to >= {need}, or pack with a CUDA 12 build (driver >= 525)")]
    if inv.cuda_driver_version and _version(inv.cuda_driver_version) < _version(req.cuda_line):
        return [Check("driver.version", "fail", "driver",
                      f"driver supports CUDA {inv.cuda_driver_version}, the wheels need {req.cuda_line}",
                      f"upgrade the NVIDIA driver to >= {need}")]
    return [Check("driver.version", "pass", "driver", f"driver {inv.driver_version} >= {need} (CUDA {req.cuda_line})")]


def _host_checks(inv: Inventory, model: ModelFacts, req: Requirements) -> list[Check]:
    host = inv.host
    assert host is not None
    out: list[Check] = []
    want = req.target_arch or "x86_64"
    out.append(Check("host.arch", "pass" if host.arch == want else "fail", "host",
                     f"CPU architecture {host.arch}" + ("" if host.arch == want else f", the wheels are for {want}"),
                     None if host.arch == want else f"pack a bundle for {host.arch}"))
    glibc = _version(host.glibc)
    if glibc and glibc < MIN_GLIBC:
        out.append(Check("host.glibc", "fail", "host", f"glibc {host.glibc} < 2.28 (manylinux_2_28 wheels)",
                         "upgrade the OS (RHEL 8+, Debian 10+, Ubuntu 20.04+)"))
    elif glibc:
        out.append(Check("host.glibc", "pass", "host", f"glibc {host.glibc}"))
    py = _version(host.python)[:2]
    ok_py = PYTHONS[0] <= py <= PYTHONS[1]
    out.append(Check("host.python", "pass" if ok_py else "fail", "host", f"Python {host.python}",
                     None if ok_py else "vLLM 0.33 wheels need Python 3.11 to 3.14: install one from the OS"))
    weights = req.weights_bytes or model.weights_bytes
    if host.ram_total_mib is not None:
        ram = host.ram_total_mib * MIB
        out.append(Check("host.ram", "pass" if ram >= weights else "warn", "host",
                         f"{ram / GIB:.1f} GiB RAM for {weights / GIB:.1f} GiB of weights",
                         None if ram >= weights else "less RAM than the weights makes loading slow: add RAM"))
    need = req.bundle_bytes or weights
    for path, free in host.disk_free_bytes.items():
        ok = free >= need
        out.append(Check("host.disk", "pass" if ok else "fail", path,
                         f"{free / GIB:.1f} GiB free, {need / GIB:.1f} GiB needed",
                         None if ok else f"free {(need - free) / GIB:.1f} GiB at {path} or choose another location"))
    return out


# ---------------------------------------------------------------- profile matching


def _usable_memory(gpu: Gpu) -> tuple[int | None, str | None]:
    """Memory one vLLM process can use on this GPU, or why none: with MIG on, it is one slice."""
    if gpu.mig_enabled:
        if not gpu.mig_slices:
            return None, "MIG is on and the capture gives no slice sizes"
        return max(s.memory_mib for s in gpu.mig_slices), None
    return gpu.memory_total_mib, None


def _eligible(profile: Profile, gpu: Gpu) -> str | None:
    """Why this GPU cannot hold a rank of the profile (said of the GPU: group_by_gpu names it), or None."""
    m = profile.match
    if m.vendor != gpu.vendor:
        return f"{gpu.vendor}, the profile is for {m.vendor}"
    if gpu.vendor == "nvidia":
        if gpu.cc_text is None:
            return "compute capability unknown"
        if gpu.cc_text not in m.compute_capability:
            return (f"sm_{gpu.cc_text.replace('.', '')}, the profile needs "
                    + " or ".join(f"sm_{c.replace('.', '')}" for c in m.compute_capability))
    elif gpu.gfx not in m.gfx:
        return f"{gpu.gfx or 'an unknown architecture'}, the profile needs {', '.join(m.gfx)}"
    if gpu.memory_total_mib is None:
        return "memory size unknown"
    return None


def fit_profile(profile: Profile, model: ModelFacts, inv: Inventory, req: Requirements,
                request: LayoutRequest = NO_OVERRIDES) -> ProfileFit:
    sized: dict[str, Any] = {"context_len": request.max_model_len or profile.context_len,
                             "concurrency": request.concurrency or profile.sizing.concurrency,
                             "kv_dtype_bytes": profile.kv_dtype_bytes,
                             "overhead_bytes": int(profile.sizing.overhead_gib * GIB)}
    weights_model = model if req.weights_bytes is None else replace(model, weights_bytes=req.weights_bytes)
    if not profile.valid_for_vllm(req.vllm_version):
        return ProfileFit(profile, False, reasons=(f"valid for vLLM {profile.vllm.versions}, the bundle has {req.vllm_version}",))
    sizes = profile.match.tensor_parallel_sizes
    if request.tensor_parallel is not None:
        if request.tensor_parallel not in sizes and profile.match.vendor != "cpu":
            allowed = " or ".join(map(str, sizes))
            return ProfileFit(profile, False, reasons=(
                f"--tp {request.tensor_parallel} is outside what {profile.name} allows (tensor parallel {allowed})",))
        sizes = (request.tensor_parallel,)
    if profile.match.vendor == "cpu":
        return _fit_host(profile, weights_model, inv, sized, request)
    return _fit_gpus(profile, weights_model, inv, sized, sizes, request)


def _fit_host(profile: Profile, model: ModelFacts, inv: Inventory, sized: dict[str, Any],
              request: LayoutRequest) -> ProfileFit:
    host = inv.host
    if host is None or host.ram_total_mib is None:
        return ProfileFit(profile, False, reasons=("CPU profile: host RAM unknown (reviewing a capture)",))
    need = memory_need(model, memory_mib=host.ram_total_mib, utilization=profile.utilization, where="host", **sized)
    if not need.fits:
        return ProfileFit(profile, False, 1, (), need, (f"host RAM: {need.describe()}",))
    try:
        layout = host_layout(model=model.name, profile=profile.name, max_model_len=sized["context_len"],
                             concurrency=sized["concurrency"], request=request)
    except LayoutDoesNotFit as exc:
        return ProfileFit(profile, False, 1, (), need, (exc.reason,))
    return ProfileFit(profile, True, 1, (), need, layout=layout)


def _devices(gpus: list[Gpu]) -> list[Device]:
    """What one vLLM rank can be given: each whole GPU, or each slice of a GPU in MIG mode."""
    out: list[Device] = []
    for g in gpus:
        if g.mig_enabled:
            out += [Device(g.index, s.memory_mib, None, s.name) for s in g.mig_slices]
        elif g.memory_total_mib is not None:
            out.append(Device(g.index, g.memory_total_mib, g.memory_free_mib, None, g.uuid))
    return out


def _fit_gpus(profile: Profile, model: ModelFacts, inv: Inventory, sized: dict[str, Any], sizes: tuple[int, ...],
              request: LayoutRequest) -> ProfileFit:
    ineligible: list[tuple[Gpu, str]] = []
    eligible: list[tuple[Gpu, int]] = []
    for g in inv.gpus:
        why = _eligible(profile, g)
        mem, mig_why = _usable_memory(g)
        if why or mig_why or mem is None:
            ineligible.append((g, why or mig_why or "memory unknown"))
        else:
            eligible.append((g, mem))
    by_gpu = tuple(group_by_gpu(ineligible))
    reasons = [r.message for r in by_gpu]
    if not inv.gpus:
        reasons.append("no GPU found")
    if not eligible:
        return ProfileFit(profile, False, reasons=tuple(dict.fromkeys(reasons)), gpu_reasons=by_gpu)

    best_short: MemoryNeed | None = None
    for tp in sizes:
        pool = [(g, mem) for g, mem in eligible if not (tp > 1 and g.mig_enabled)]
        if len(pool) < tp:
            reasons.append(f"tensor parallel {tp} needs {tp} matching GPUs, {len(pool)} available")
            continue
        # The GPUs with the most memory, then the most free memory.
        pool.sort(key=lambda gm: (gm[1], gm[0].memory_free_mib or 0), reverse=True)
        chosen = pool[:tp]
        smallest = min(mem for _g, mem in chosen)
        need = memory_need(model, memory_mib=smallest, utilization=profile.utilization, tensor_parallel=tp, **sized)
        if not need.fits:
            best_short = need if best_short is None or need.short_by < best_short.short_by else best_short
            continue
        gpus = tuple(g.index for g, _m in chosen)
        busy = group_by_gpu(_free_memory_problems(chosen, profile, need))
        if busy:
            return ProfileFit(profile, False, tp, gpus, need, tuple(r.message for r in busy), gpu_reasons=tuple(busy))
        try:
            layout = propose_layout(_devices([g for g, _m in eligible]), model=model.name, profile=profile.name,
                                    tensor_parallel=tp, need=need, utilization=profile.utilization,
                                    max_model_len=sized["context_len"], concurrency=sized["concurrency"],
                                    request=request, smaller=best_short)
        except LayoutDoesNotFit as exc:
            return ProfileFit(profile, False, tp, gpus, need, (exc.reason,), gpu_reasons=by_gpu)
        warnings = ("serving on one MIG slice",) if any(g.mig_enabled for g, _m in chosen) else ()
        return ProfileFit(profile, True, tp, gpus, need, (), warnings, layout)
    if best_short is not None:
        reasons.append(f"memory at tensor parallel {best_short.tensor_parallel}: {best_short.describe()}, "
                       f"short by {best_short.short_by / GIB:.1f} GiB")
    return ProfileFit(profile, False, None, (), best_short, tuple(dict.fromkeys(reasons)), gpu_reasons=by_gpu)


def _free_memory_problems(chosen: list[tuple[Gpu, int]], profile: Profile, need: MemoryNeed) -> list[tuple[Gpu, str]]:
    """vLLM refuses to start unless free memory >= total x gpu-memory-utilization."""
    problems = []
    for g, mem in chosen:
        if g.memory_free_mib is None or g.mig_enabled:
            continue
        wanted = int(mem * profile.utilization)
        if g.memory_free_mib < wanted:
            could = g.memory_free_mib / mem
            still = need.total <= int(g.memory_free_mib * MIB)
            problems.append((g,
                f"{mem - g.memory_free_mib} MiB already in use; vLLM needs {wanted} MiB free at "
                f"start ({profile.utilization:.2f} of {mem} MiB), {g.memory_free_mib} MiB free: stop the other "
                f"processes (nvidia-smi shows them)"
                + (f", or lower gpu-memory-utilization to {could:.2f} (the model still fits)" if still else "")))
    return problems


def check_models(inv: Inventory, profiles: list[Profile], models: Sequence[str | ModelFacts], req: Requirements,
                 request: LayoutRequest = NO_OVERRIDES) -> HardwareReport:
    """Judge each model (its facts, or a published model's name) against the profiles of its class."""
    reports = []
    for item in models:
        model = item if isinstance(item, ModelFacts) else KNOWN_MODELS[item]
        name = model.name
        checks = general_checks(inv, model, req)
        fits = [fit_profile(p, model, inv, req, request) for p in profiles if p.serves(model.model_class)]
        if model.quantization != "mxfp4" and model.model_class != "tiny":  # say which kernel path it takes
            fits = [replace(f, warnings=(*f.warnings, model.kernel_path)) if f.fits else f for f in fits]
        fits.sort(key=lambda f: (not f.fits, -f.profile.priority, f.profile.name))
        blocking = [c for c in checks if c.status == "fail" and c.id in ("driver.version", "host.arch",
                                                                          "host.glibc", "host.python", "host.disk")]
        if blocking:  # a host-wide failure rules out every profile: say so on each of them
            fits = [replace(f, fits=False, reasons=(*f.reasons, *(c.message for c in blocking)), layout=None)
                    for f in fits]
        chosen = next((f for f in fits if f.fits), None)
        if chosen:
            reason = (f"{chosen.profile.name} fits at tensor parallel {chosen.tensor_parallel}"
                      + (f" on GPU {', '.join(map(str, chosen.gpus))}" if chosen.gpus else "")
                      + (f": {chosen.need.describe()}" if chosen.need else "")
                      + (f"; {model.kernel_path}" if model.kernel_path in chosen.warnings else ""))
        elif fits:
            failed = list(dict.fromkeys(f"{c.subject}: {c.message}" for c in checks if c.status == "fail"))
            reason = "no profile fits: " + "; ".join(
                failed or [f"{f.profile.name}: {f.reasons[0]}" for f in fits if f.reasons])
        else:
            reason = f"no profile is defined for {model.model_class} models such as {name}"
        reports.append(ModelReport(name, tuple(checks), tuple(fits), chosen, reason, model))
    return HardwareReport(inv, tuple(reports), req)


def requirements_from_manifest(manifest: Any) -> Requirements:
    """What a bundle asks of the target (which model it carries is read from its config.json, not its name)."""
    wheels = manifest.components.get("wheels", {})
    weights = loaded_weights_bytes(manifest.files)
    return Requirements(
        cuda_line=str(wheels.get("cuda", DEFAULT_CUDA_LINE)),
        vllm_version=str(wheels.get("vllm", DEFAULT_VLLM)),
        weights_bytes=weights or None,
        bundle_bytes=manifest.total_size,
        target_arch=wheels.get("arch"),
    )
