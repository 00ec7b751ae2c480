"""Hardware profiles (`profiles/*.yaml`): which hardware they match, the vLLM flags and environment to
serve with, the vLLM versions they are valid for, and the sizing the memory check uses.

A profile's `vllm.flags` is written as the file `vllm serve --config` reads, so a profile is exactly
what the service runs with. `schemas/profile.schema.json` is generated from these models.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from gptossctl.errors import UsageError
from gptossctl.hardware.modelfacts import ModelClass
from gptossctl.hardware.vllm_flags import unknown_flags
from gptossctl.resources import data_dir
from gptossctl.secretnames import is_secret_name
from gptossctl.yamldoc import load_model, parse_yaml, validate

PROFILE_SCHEMA = "gptossctl.profile/2"
# Schema /2 matches model classes (hardware.modelfacts: derived from a model's config.json, never its name).
# Schema /1 named the published models; it is still read (bundles signed with /1 profiles stay installable), each
# name read as its class.
ModelName = Literal["gpt-oss-20b", "gpt-oss-120b", "tiny"]
V1_CLASSES: dict[str, ModelClass] = {"gpt-oss-20b": "20b-class", "gpt-oss-120b": "120b-class", "tiny": "tiny"}
# Flags a profile may not set, with why. The installer owns where vLLM listens, what it serves and its key;
# the rest open the network, read or load code or files from outside the release, or log what must not be
# logged. A profile sets tuning flags only (the flag must also be vLLM's own name in full: vllm_flags).
_RESERVED_FLAGS: dict[str, str] = {
    **dict.fromkeys(("model", "host", "port", "api-key", "served-model-name", "config", "tensor-parallel-size",
                     "uds", "headless", "api-server-count", "root-path", "tokenizer", "hf-config-path",
                     "revision", "code-revision", "download-dir", "hf-token"),
                    "is set by the installer, not by a profile"),
    **dict.fromkeys(("ssl-keyfile", "ssl-certfile", "ssl-ca-certs", "ssl-cert-reqs", "ssl-ciphers",
                     "enable-ssl-refresh", "allowed-origins", "allowed-methods", "allowed-headers",
                     "allow-credentials", "grpc", "grpc-port", "data-parallel-address", "data-parallel-rpc-port",
                     "distributed-executor-backend", "kv-transfer-config", "kv-events-config", "ec-transfer-config",
                     "weight-transfer-config", "otlp-traces-endpoint", "tool-server", "allowed-media-domains"),
                    "opens the network or sends data off the host: vLLM stays on loopback behind the proxy "
                    "(README, 'Serving beyond this host')"),
    **dict.fromkeys(("middleware", "tool-parser-plugin", "reasoning-parser-plugin", "logits-processors",
                     "logits-processor-pattern", "worker-extension-cls", "io-processor-plugin", "log-config-file",
                     "chat-template", "lora-modules", "enable-lora", "allowed-local-media-path",
                     "model-loader-extra-config", "load-format", "speculative-config", "enable-prompt-embeds",
                     "enable-tokenizer-info-endpoint"),
                    "loads code, a template or files from outside the signed release (or reads host files for "
                    "clients): never from a profile"),
    "enable-log-requests": "logs every prompt into the journal: a profile never turns that on",
}
# Flags a profile may write only as false.
_FALSE_ONLY = {"trust-remote-code": "runs the model repository's Python: gpt-oss needs none"}
# The installer owns these (service.env): a profile may neither set nor loosen them.
INSTALLER_ENV = frozenset({"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "VLLM_NO_USAGE_STATS",
                           "DO_NOT_TRACK", "VLLM_API_KEY", "TIKTOKEN_ENCODINGS_BASE", "HOME", "HF_HOME",
                           "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE",
                           "PYTHONNOUSERSITE", "PYTHONSAFEPATH"})
# What the installer adds to pin a service to its devices (install/render.py `pin_devices`): never a profile's.
INSTALLER_PINNING = frozenset({"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                               "VLLM_CPU_OMP_THREADS_BIND"})
_TOGGLE = r"0|1|[Tt]rue|[Ff]alse"
_INT = r"[0-9]{1,9}"
# THE allowlist of a profile's environment: exact names (never prefixes), each with why it is needed and the
# values it takes. Anything else is refused at pack, at profile load and install, and is a compliance failure
# in a rendered environment file. Every name here only tunes; none names a file, a library or a place to load
# code from (NCCL_NET_PLUGIN, PYTHONPYCACHEPREFIX, TRITON_*, OPENSSL_CONF... do, so they are not here).
PROFILE_ENV: dict[str, tuple[str, str]] = {
    "VLLM_CPU_KVCACHE_SPACE": ("GiB of host RAM for the KV cache on CPU (vllm-cpu)", _INT),
    "VLLM_CPU_OMP_THREADS_BIND": ("CPU cores vLLM's OpenMP threads bind to (auto, nobind or a core list)",
                                  r"auto|nobind|[0-9,\-|]{1,256}"),
    "VLLM_SYSTEM_START_DATE": ("the date in the harmony system message (a pinned prompt)", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "VLLM_HAS_FLASHINFER_CUBIN": ("FlashInfer's kernels are shipped prebuilt: no JIT at start", _TOGGLE),
    "VLLM_ROCM_USE_AITER": ("ROCm: AITER kernels on (the fast path on MI300X/MI355X)", _TOGGLE),
    # vLLM 0.33's AITER toggles (vllm/envs.py), each turning one family of AITER kernels on or off.
    "VLLM_ROCM_USE_AITER_LINEAR": ("ROCm: AITER linear (GEMM) kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_LINEAR_HIPBMM": ("ROCm: AITER hipBLASLt batched GEMM for linear layers", _TOGGLE),
    "VLLM_ROCM_USE_AITER_MOE": ("ROCm: AITER fused-MoE kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_RMSNORM": ("ROCm: AITER RMSNorm kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_MLA": ("ROCm: AITER MLA attention kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_MHA": ("ROCm: AITER multi-head attention kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION": ("ROCm: AITER Triton unified attention", _TOGGLE),
    "VLLM_ROCM_USE_AITER_TRITON_ROPE": ("ROCm: AITER Triton rotary embedding", _TOGGLE),
    "VLLM_ROCM_USE_AITER_TRITON_GEMM": ("ROCm: AITER Triton GEMM kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_TRITON_SPARSE_MLA": ("ROCm: AITER Triton sparse MLA kernels", _TOGGLE),
    "VLLM_ROCM_USE_AITER_FP8BMM": ("ROCm: AITER Triton FP8 batched GEMM", _TOGGLE),
    "VLLM_ROCM_USE_AITER_FP4BMM": ("ROCm: AITER Triton FP4 batched GEMM", _TOGGLE),
    "VLLM_ROCM_USE_AITER_FUSION_SHARED_EXPERTS": ("ROCm: AITER fused shared experts", _TOGGLE),
    "VLLM_ROCM_USE_AITER_CUSTOM_AR": ("ROCm: AITER custom all-reduce between GPUs", _TOGGLE),
    "VLLM_LOGGING_LEVEL": ("vLLM's log level", r"DEBUG|INFO|WARNING|ERROR|CRITICAL"),
    "VLLM_ENGINE_READY_TIMEOUT_S": ("seconds the API server waits for the engine (large models load slowly)", _INT),
    "CUDA_DEVICE_ORDER": ("GPU numbering: only the PCI bus order the installer's GPU indices use", r"PCI_BUS_ID"),
    "CUDA_MODULE_LOADING": ("CUDA loads kernels lazily or eagerly", r"LAZY|EAGER"),
    "NCCL_DEBUG": ("NCCL's log level", r"VERSION|WARN|INFO|TRACE"),
    "NCCL_P2P_DISABLE": ("NCCL: no peer-to-peer between GPUs (broken PCIe P2P on some boards)", _TOGGLE),
    "NCCL_IB_DISABLE": ("NCCL: no InfiniBand (one host)", _TOGGLE),
    "NCCL_SHM_DISABLE": ("NCCL: no shared-memory transport", _TOGGLE),
    "OMP_NUM_THREADS": ("OpenMP threads per process", _INT),
}
PROFILE_ENV_WHERE = "gptossctl/hardware/profiles.py PROFILE_ENV"


def env_allowed(name: str, value: str) -> str | None:
    """None if a profile may set `name` to `value`; else why not (naming the variable and the allowlist)."""
    entry = PROFILE_ENV.get(name)
    if entry is None:
        return (f"{name} is not in the allowlist of profile environment variables ({PROFILE_ENV_WHERE}): "
                "only variables that tune vLLM, CUDA, ROCm or NCCL without naming a file or library are allowed")
    if not re.fullmatch(entry[1], value):
        return f"{name}={value!r}: the allowlist ({PROFILE_ENV_WHERE}) takes only {entry[1]!r} ({entry[0]})"
    return None


def rendered_env_problems(names: list[str]) -> list[str]:
    """Names in a rendered environment file that neither the installer nor the profile allowlist puts there."""
    return [f"{n} is neither set by the installer nor in the profile environment allowlist ({PROFILE_ENV_WHERE})"
            for n in names if n not in INSTALLER_ENV and n not in INSTALLER_PINNING and n not in PROFILE_ENV]


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Gone in vLLM 0.33 (flags --attention-backend and --moe-backend replaced them).
_REMOVED_ENV = re.compile(r"VLLM_ATTENTION_BACKEND|VLLM_USE_TRTLLM_.*|VLLM_MXFP4_USE_MARLIN|"
                          r"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8")
_FLAG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    vendor: Literal["nvidia", "amd", "cpu"]
    compute_capability: tuple[str, ...] = Field((), description='NVIDIA compute capabilities, e.g. ["9.0"]')
    gfx: tuple[str, ...] = Field((), description='AMD architectures, e.g. ["gfx942"]')
    tensor_parallel_sizes: tuple[int, ...] = Field((1,), description="GPU counts to try, smallest first")

    @field_validator("compute_capability")
    @classmethod
    def _cc(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for cc in v:
            if not re.match(r"^\d+\.\d+$", cc):
                raise ValueError(f"compute capability {cc!r} must look like 9.0")
        return v

    @field_validator("tensor_parallel_sizes")
    @classmethod
    def _tp(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(n not in (1, 2, 4, 8) for n in v):
            raise ValueError("tensor parallel sizes are from 1, 2, 4, 8 (gpt-oss has 8 KV heads)")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _vendor_rules(self) -> Match:
        if self.vendor == "nvidia" and not self.compute_capability:
            raise ValueError("an nvidia profile lists its compute_capability values")
        if self.vendor == "amd" and not self.gfx:
            raise ValueError("an amd profile lists its gfx architectures")
        return self


class VllmSpec(_Strict):
    versions: str = Field(description="PEP 440 specifier of the vLLM versions this profile is valid for")
    flags: dict[str, Scalar] = Field(description="`vllm serve --config` keys (long flag names without --)")
    prefix_caching_off: str | None = Field(
        None, min_length=10, max_length=500,
        description="Why enable-prefix-caching is false in this profile. Production profiles cache prefixes "
                    "(chat traffic shares system prompts); one that does not says why here")
    env: dict[str, str] = {}

    @field_validator("versions")
    @classmethod
    def _versions(cls, v: str) -> str:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(v)
        except InvalidSpecifier:
            raise ValueError(f"{v!r} is not a version specifier such as '>=0.10.1,<0.34'") from None
        return v

    @field_validator("flags")
    @classmethod
    def _flags(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        for k, value in v.items():
            if not _FLAG.fullmatch(k):
                raise ValueError(f"flag {k!r}: write the long flag name without dashes in front, e.g. max-model-len")
            if k in _RESERVED_FLAGS:
                raise ValueError(f"flag {k!r} {_RESERVED_FLAGS[k]}")
            if k in _FALSE_ONLY and value is not False:
                raise ValueError(f"flag {k!r} may only be false: it {_FALSE_ONLY[k]}")
            if isinstance(value, str) and (len(value) > 4096 or any(ord(c) < 0x20 for c in value)):
                raise ValueError(f"flag {k!r}: the value has control characters or is too long")
        if "max-model-len" not in v or "gpu-memory-utilization" not in v:
            raise ValueError("flags must set max-model-len and gpu-memory-utilization: the memory check needs them")
        util = v["gpu-memory-utilization"]
        if not isinstance(util, float) or not 0 < util <= 1:
            raise ValueError("gpu-memory-utilization must be a fraction in (0, 1]")
        return v

    @model_validator(mode="after")
    def _vllm_options(self) -> VllmSpec:
        problems = unknown_flags(list(self.flags), self.versions)
        if problems:
            raise ValueError("; ".join(problems))
        if self.prefix_caching_off is not None and self.flags.get("enable-prefix-caching") is not False:
            raise ValueError("prefix_caching_off gives a reason for prefix caching being off, but the flags do not "
                             "turn it off: set enable-prefix-caching: false, or drop prefix_caching_off")
        return self

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, value in v.items():
            if not _ENV_NAME.fullmatch(k):
                raise ValueError(f"{k!r} is not an environment variable name")
            if _REMOVED_ENV.fullmatch(k):
                raise ValueError(f"{k} was removed in vLLM 0.33: use the --attention-backend or --moe-backend flag")
            if k.upper() in INSTALLER_ENV:
                raise ValueError(f"{k} is set by the installer (offline, telemetry, key, cache paths): a profile "
                                 "can neither set nor loosen it")
            if k in INSTALLER_PINNING - PROFILE_ENV.keys() or k == "ROCR_VISIBLE_DEVICES":
                raise ValueError(f"{k} is set by the installer (the GPUs a service sees, install/render.py "
                                 "pin_devices): a profile never sets it; see the allowlist, {PROFILE_ENV_WHERE}")
            if is_secret_name(k):
                raise ValueError(f"{k}: secrets never live in a profile (its name says key, token, secret, "
                                 "password or credential)")
            if any(ord(c) < 0x20 for c in value) or '"' in value or len(value) > 4096:
                raise ValueError(f"{k}: the value has a quote, control characters or is too long")
            why = env_allowed(k, value)
            if why:
                raise ValueError(why)
        return v


class Sizing(_Strict):
    concurrency: int = Field(ge=1, description="Sequences of max-model-len tokens the KV cache must hold at once")
    overhead_gib: float = Field(gt=0, description="Per-GPU runtime overhead: CUDA context, activations, graphs")


_ONE_OF_CLASSES_OR_MODELS: JsonDict = {"allOf": [{
    "if": {"properties": {"schema": {"const": "gptossctl.profile/1"}}},
    "then": {"required": ["models"], "not": {"required": ["classes"]}},
    "else": {"required": ["classes"], "not": {"required": ["models"]}}}]}


class Profile(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_ONE_OF_CLASSES_OR_MODELS)

    schema_: Literal["gptossctl.profile/1", "gptossctl.profile/2"] = Field(alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    description: str
    classes: tuple[ModelClass, ...] = Field(
        (), description="Schema /2: the model classes served (20b-class, 120b-class, tiny), derived from a model's "
                        "config.json, so a fine-tune matches the profiles of the model it was tuned from")
    models: tuple[ModelName, ...] = Field(
        (), description="Schema /1 only (still read, no longer written): published model names, each read as its class")
    priority: int = Field(0, description="Among profiles that fit, the highest wins (fast paths first)")
    match: Match
    vllm: VllmSpec
    sizing: Sizing
    performance: str = Field(description="What to expect, so nobody is surprised by a slower path")

    @model_validator(mode="after")
    def _classes_or_models(self) -> Profile:
        if self.schema_ == "gptossctl.profile/1":
            if not self.models or self.classes:
                raise ValueError("a gptossctl.profile/1 profile lists models (and no classes); write "
                                 "schema: gptossctl.profile/2 with classes: [20b-class] instead")
        elif not self.classes or self.models:
            raise ValueError("a gptossctl.profile/2 profile lists the model classes it serves, e.g. "
                             "classes: [20b-class] (models: is schema /1)")
        return self

    @property
    def model_classes(self) -> tuple[ModelClass, ...]:
        """The classes this profile serves, whichever schema it was written in."""
        return self.classes or tuple(dict.fromkeys(V1_CLASSES[m] for m in self.models))

    def serves(self, model_class: str) -> bool:
        return model_class in self.model_classes

    @property
    def production(self) -> bool:
        """Serves a real model: the tiny CPU models are for the demo and the tests."""
        return "tiny" not in self.model_classes

    @property
    def context_len(self) -> int:
        return int(self.vllm.flags["max-model-len"])

    @property
    def utilization(self) -> float:
        return float(self.vllm.flags["gpu-memory-utilization"])

    @property
    def kv_dtype_bytes(self) -> int:
        return 1 if str(self.vllm.flags.get("kv-cache-dtype", "auto")).startswith("fp8") else 2

    def valid_for_vllm(self, version: str) -> bool:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(self.vllm.versions).contains(version, prereleases=True)

    def vllm_config(self, *, tensor_parallel: int) -> dict[str, Any]:
        """The `vllm serve --config` document for this profile at a tensor-parallel size."""
        return {**self.vllm.flags, "tensor-parallel-size": tensor_parallel}


def load_profile(path: Path) -> Profile:
    profile, _text = load_model(path, Profile, what="profile", code="profile.invalid",
                                schema="schemas/profile.schema.json")
    return _named_as_file(profile, path)


def profile_from_text(text: str, path: Path) -> Profile:
    """A profile from text already read (and verified) elsewhere; `path` names it in messages."""
    doc = parse_yaml(text, where=str(path), what="profile", code="profile.invalid")
    profile = validate(Profile, doc, text=text, where=str(path), what="profile", code="profile.invalid",
                       schema="schemas/profile.schema.json")
    return _named_as_file(profile, path)


def _named_as_file(profile: Profile, path: Path) -> Profile:
    if profile.name != path.stem:
        raise UsageError(f"{path}: name {profile.name!r} must equal the file name", code="profile.invalid",
                         hint=f"rename the file to {profile.name}.yaml or set name: {path.stem}")
    return profile


def load_profiles(directory: Path | None = None) -> list[Profile]:
    directory = directory or data_dir("profiles")
    profiles = [load_profile(p) for p in sorted(directory.glob("*.yaml"))]
    if not profiles:
        raise UsageError(f"no profiles in {directory}", code="profile.none")
    return profiles
