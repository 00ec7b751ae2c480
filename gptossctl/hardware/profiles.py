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

from gptossctl.errors import UsageError
from gptossctl.resources import data_dir
from gptossctl.secretnames import is_secret_name
from gptossctl.yamldoc import load_model, parse_yaml, validate

PROFILE_SCHEMA = "gptossctl.profile/1"
ModelName = Literal["gpt-oss-20b", "gpt-oss-120b", "tiny"]
# The installer owns these: the model path, where to listen, and the key (never in argv).
_RESERVED_FLAGS = {"model", "host", "port", "api-key", "served-model-name", "config"}
# The installer owns these (service.env): a profile may neither set nor loosen them.
INSTALLER_ENV = frozenset({"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "VLLM_NO_USAGE_STATS",
                           "DO_NOT_TRACK", "VLLM_API_KEY", "TIKTOKEN_ENCODINGS_BASE", "HOME", "HF_HOME",
                           "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE",
                           "PYTHONNOUSERSITE", "PYTHONSAFEPATH"})
# Variables that make the dynamic loader or Python run code of someone's choosing.
_LOADER_ENV = re.compile(r"LD_\w+|PYTHON(PATH|HOME|STARTUP|INSPECT|USERBASE|EXECUTABLE|SAFEPATH|BREAKPOINT|"
                         r"WARNINGS|PLATLIBDIR)|PATH|BASH_ENV|ENV|GCONV_PATH|MALLOC_\w+|GLIBC_TUNABLES|IFS|"
                         r"NODE_OPTIONS|PERL5?LIB|RUBYLIB|TORCH_\w*EXTENSIONS\w*|TRITON_LIBCUDA_PATH", re.I)
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
                raise ValueError(f"flag {k!r} is set by the installer, not by a profile")
            if isinstance(value, str) and (len(value) > 4096 or any(ord(c) < 0x20 for c in value)):
                raise ValueError(f"flag {k!r}: the value has control characters or is too long")
        if "max-model-len" not in v or "gpu-memory-utilization" not in v:
            raise ValueError("flags must set max-model-len and gpu-memory-utilization: the memory check needs them")
        util = v["gpu-memory-utilization"]
        if not isinstance(util, float) or not 0 < util <= 1:
            raise ValueError("gpu-memory-utilization must be a fraction in (0, 1]")
        return v

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
            if _LOADER_ENV.fullmatch(k):
                raise ValueError(f"{k} changes what code the loader or Python runs: never from a profile")
            if is_secret_name(k):
                raise ValueError(f"{k}: secrets never live in a profile (its name says key, token, secret, "
                                 "password or credential)")
            if any(ord(c) < 0x20 for c in value) or '"' in value or len(value) > 4096:
                raise ValueError(f"{k}: the value has a quote, control characters or is too long")
        return v


class Sizing(_Strict):
    concurrency: int = Field(ge=1, description="Sequences of max-model-len tokens the KV cache must hold at once")
    overhead_gib: float = Field(gt=0, description="Per-GPU runtime overhead: CUDA context, activations, graphs")


class Profile(_Strict):
    schema_: Literal["gptossctl.profile/1"] = Field(alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    description: str
    models: tuple[ModelName, ...] = Field(min_length=1)
    priority: int = Field(0, description="Among profiles that fit, the highest wins (fast paths first)")
    match: Match
    vllm: VllmSpec
    sizing: Sizing
    performance: str = Field(description="What to expect, so nobody is surprised by a slower path")

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
