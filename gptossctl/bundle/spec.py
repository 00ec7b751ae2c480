"""Bundle recipes (`bundles/*.yaml`): what a bundle holds and where it comes from.

Validated strictly with pydantic; an error names the file, the line and the field, so a sysadmin
can fix a recipe without reading code. `schemas/bundle-spec.schema.json` is generated from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gptossctl.durations import DURATION_RE, parse_duration
from gptossctl.errors import UsageError

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    dir: str | None = Field(None, description="Local directory, relative to the recipe file")


class ModelSpec(_Strict):
    name: str = Field(description="Name the model is served under (--served-model-name)")
    repo: str = Field(description="Hugging Face repository id, for provenance")
    revision: str = Field(description="Revision (commit hash once resolved)")
    license: str = "Apache-2.0"
    source: SourceSpec = SourceSpec()
    include: tuple[str, ...] = DEFAULT_MODEL_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_MODEL_EXCLUDE


class WheelsSpec(_Strict):
    dir: str | None = Field(None, description="Local wheelhouse, relative to the recipe file")


class BundleSpec(_Strict):
    schema_: str = Field(alias="schema", pattern=r"^gptossctl\.bundle-spec/1$")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = ""
    version: int | None = Field(None, ge=1, description="Bundle version; default: UTC time YYYYMMDDHHMM")
    expires_in: str = Field("180d", description="Validity, like 90d, 12h, 2w")
    model: ModelSpec
    wheels: WheelsSpec = WheelsSpec()
    profiles: tuple[str, ...] = ()
    units: tuple[str, ...] = ()

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not DURATION_RE.match(v):
            raise ValueError("must look like 90d, 12h, 30m or 2w")
        return v


def load_spec(path: Path) -> tuple[BundleSpec, Path]:
    """Load and validate a recipe; returns it and the directory relative paths start from."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror}", code="spec.unreadable") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})",
                         code="spec.invalid") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a recipe is a YAML mapping", code="spec.invalid")
    try:
        return BundleSpec.model_validate(doc), path.parent
    except ValidationError as exc:
        raise UsageError(
            f"{path}: {len(exc.errors())} problem(s) in the recipe",
            code="spec.invalid",
            hint="; ".join(
                f"line {yaml_line(text, e['loc']) or '?'}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors()
            ) + f" (schema: schemas/bundle-spec.schema.json)",
        ) from None


def yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the node at `loc` (keys and list indexes), or of its nearest parent."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
