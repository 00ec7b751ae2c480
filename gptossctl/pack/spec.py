"""Bundle recipes (`bundles/*.yaml`): what a bundle holds and where it comes from.

Validated strictly with pydantic; an error names the file, the line and the field, so a sysadmin
can fix a recipe without reading code. `schemas/bundle-spec.schema.json` is generated from here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gptossctl.durations import parse_duration
from gptossctl.errors import UsageError
from gptossctl.yamldoc import load_model, yaml_line

__all__ = ["BundleSpec", "load_spec", "parse_duration", "yaml_line"]

SPEC_SCHEMA = "gptossctl.bundle-spec/1"

# What vLLM reads from a gpt-oss repository; `original/` and `metal/` are never read by it.
DEFAULT_MODEL_INCLUDE = (
    "model-*.safetensors",
    "model.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "LICENSE",
    "USAGE_POLICY",
)
DEFAULT_MODEL_EXCLUDE = ("original/*", "metal/*")
DEFAULT_MODEL_REQUIRED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                          "LICENSE", "USAGE_POLICY")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    dir: str | None = Field(None, description="Plain local model directory, relative to the recipe file")
    hf_cache: str | None = Field(None, description="Hugging Face cache directory (HF_HUB_CACHE layout)")

    @model_validator(mode="after")
    def _one(self) -> SourceSpec:
        if self.dir and self.hf_cache:
            raise ValueError("give dir or hf_cache, not both (neither: download from the Hub)")
        return self


class ModelSpec(_Strict):
    name: str = Field(description="Name the model is served under (--served-model-name)")
    repo: str = Field(description="Hugging Face repository id, e.g. openai/gpt-oss-20b")
    revision: str = Field(description="Branch, tag or commit; packs record the resolved commit hash")
    license: str = "Apache-2.0"
    source: SourceSpec = SourceSpec()
    include: tuple[str, ...] = DEFAULT_MODEL_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_MODEL_EXCLUDE
    required: tuple[str, ...] = Field(DEFAULT_MODEL_REQUIRED, description="Files that must be present")


class VllmPin(_Strict):
    version: str = Field(description="Exact vLLM version (>= 0.10.1, the first with gpt-oss)")

    @field_validator("version")
    @classmethod
    def _min(cls, v: str) -> str:
        from packaging.version import InvalidVersion, Version

        try:
            if Version(v) < Version("0.10.1"):
                raise ValueError(f"vLLM {v} predates gpt-oss support: use 0.10.1 or newer (0.33.0 is current)")
        except InvalidVersion:
            raise ValueError(f"{v!r} is not a version") from None
        return v


class TargetSpec(_Strict):
    python: str = Field("3.12", pattern=r"^3\.\d{1,2}$", description="Python version on the air-gapped host")
    platform: str = Field("manylinux_2_28_x86_64", description="Wheel platform tag of the air-gapped host")
    cuda: str = Field("13.0", pattern=r"^\d+\.\d+$", description="CUDA runtime line of the wheels")

    @property
    def arch(self) -> str:
        m = re.search(r"(x86_64|aarch64|ppc64le|s390x)$", self.platform)
        return m.group(1) if m else self.platform


class WheelsSpec(_Strict):
    dir: str | None = Field(None, description="Local wheelhouse; when set, nothing is fetched from an index")
    requirements: tuple[str, ...] = Field((), description="Extra requirements beyond vllm==<version>")
    include_gptossctl: bool = Field(True, description="Ship gptossctl's own wheel and dependencies")
    include_uv: bool = Field(True, description="Ship uv for a fast offline install")


class KernelsSpec(_Strict):
    flashinfer: bool = Field(True, description="Ship flashinfer-cubin and flashinfer-jit-cache")
    dir: str | None = Field(None, description="Local directory with the kernel wheels (from vllm download-kernels)")


class CompileCacheSpec(_Strict):
    dir: str
    vllm: str
    torch: str
    gpu_arch: str = Field(pattern=r"^sm_\d+|gfx\w+$")
    profile: str


class AssetsSpec(_Strict):
    tiktoken: tuple[Literal["o200k_base", "cl100k_base"], ...] = ("o200k_base", "cl100k_base")
    tiktoken_dir: str | None = Field(None, description="Local directory holding the .tiktoken files")
    compile_caches: tuple[CompileCacheSpec, ...] = ()


class BundleSpec(_Strict):
    schema_: str = Field(alias="schema", pattern=r"^gptossctl\.bundle-spec/1$")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = ""
    version: int | None = Field(None, ge=1, description="Bundle version; default: UTC time YYYYMMDDHHMM")
    expires_in: str = Field("180d", description="Validity, like 90d, 12h, 2w")
    model: ModelSpec
    vllm: VllmPin | None = Field(None, description="None: no Python stack (the CPU demo)")
    target: TargetSpec = TargetSpec()
    wheels: WheelsSpec = WheelsSpec()
    kernels: KernelsSpec = KernelsSpec()
    assets: AssetsSpec | None = None
    profiles: tuple[str, ...] = ()
    units: tuple[str, ...] = ()

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, v: str) -> str:
        try:
            parse_duration(v)
        except UsageError:
            raise ValueError("must be a positive duration like 90d, 12h, 30m or 2w, of at most 100 years") from None
        return v

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name.endswith((".yaml", ".yml")):
                if "\x00" in name or name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"site profile {name!r} must be a path inside the recipe's directory")
            elif not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name):
                raise ValueError(f"{name!r} is neither a shipped profile name nor a .yaml file next to the recipe")
        return v

    @field_validator("units")
    @classmethod
    def _units(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9@._-]{0,63}\.(service|timer)", name):
                raise ValueError(f"{name!r} is not a unit template name such as gptoss@.service")
        return v


def load_spec(path: Path) -> tuple[BundleSpec, Path]:
    """Load and validate a recipe; returns it and the directory relative paths start from."""
    spec, _text = load_model(path, BundleSpec, what="recipe", code="spec.invalid",
                             schema="schemas/bundle-spec.schema.json")
    return spec, path.parent
