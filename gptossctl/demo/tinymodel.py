"""An embedded tiny gpt-oss: a 2-layer GptOssForCausalLM in Hugging Face layout, written with the
standard library only (no torch, no Hub), deterministic for a given seed.

The shapes follow the real architecture (MoE experts with biases, attention sinks, alternating
sliding/full attention, head_dim 64 as vLLM's CPU attention needs) so the same directory exercises
the same bundle, profile and loading paths as the real models, 10,000 times smaller.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

HIDDEN = 128
HEADS = 2
KV_HEADS = 1
HEAD_DIM = 64
LAYERS = 2
EXPERTS = 4
TOP_K = 2
INTERMEDIATE = 128
SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|pad|>")
WORDS = (
    "the a an is are was what which who how why where when of to in on for with and or not yes no "
    "paris france capital model gpt oss vllm bundle signed verified air gap offline hospital bank "
    "server gpu cpu memory answer question one two three four five six seven eight nine ten"
).split()


def _vocab() -> dict[str, int]:
    tokens = list(SPECIALS) + WORDS + [chr(c) for c in range(33, 127)]
    seen: dict[str, int] = {}
    for t in tokens:
        seen.setdefault(t, len(seen))
    while len(seen) % 64:  # pad to a multiple of 64, as real vocabularies are
        seen[f"<|reserved_{len(seen)}|>"] = len(seen)
    return seen


def _config(vocab_size: int) -> dict[str, object]:
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
        "experts_per_token": TOP_K,
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "initial_context_length": 4096,
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2),
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "swiglu_limit": 7.0,
        "rms_norm_eps": 1e-05,
        "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": False},
        "router_aux_loss_coef": 0.9,
        "output_router_logits": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 3,
    }


def _shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (q, HIDDEN), p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, HIDDEN), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, HIDDEN), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (HIDDEN, q), p + "self_attn.o_proj.bias": (HIDDEN,),
            p + "self_attn.sinks": (HEADS,),
            p + "mlp.router.weight": (EXPERTS, HIDDEN), p + "mlp.router.bias": (EXPERTS,),
            p + "mlp.experts.gate_up_proj": (EXPERTS, HIDDEN, 2 * INTERMEDIATE),
            p + "mlp.experts.gate_up_proj_bias": (EXPERTS, 2 * INTERMEDIATE),
            p + "mlp.experts.down_proj": (EXPERTS, INTERMEDIATE, HIDDEN),
            p + "mlp.experts.down_proj_bias": (EXPERTS, HIDDEN),
        })
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (vocab_size, HIDDEN)
    return shapes


def _bf16(count: int, rng: random.Random, *, ones: bool) -> bytes:
    if ones:
        return b"\x80\x3f" * count  # 1.0 in bfloat16, little-endian
    # Small normal-ish values: bf16 is the top half of a float32.
    floats = struct.pack(f"<{count}f", *(rng.gauss(0.0, 0.02) for _ in range(count)))
    return b"".join(floats[i + 2 : i + 4] for i in range(0, len(floats), 4))


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], bytes]]) -> None:
    """The safetensors format: u64 header length, JSON header with offsets, then raw data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data start to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _shape, data in tensors.values():
            f.write(data)


def _tokenizer(vocab: dict[str, int]) -> dict[str, object]:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for t in SPECIALS
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|pad|>"},
    }


CHAT_TEMPLATE = (
    "{% for m in messages %}<|startoftext|>{{ m['role'] }} {{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|startoftext|>assistant {% endif %}"
)


def write_tiny_model(out: Path, *, seed: int = 0) -> Path:
    """Write the tiny model into `out` (created) and return it."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    vocab = _vocab()
    shapes = _shapes(len(vocab))
    tensors = {}
    for name, shape in shapes.items():
        count = 1
        for d in shape:
            count *= d
        tensors[name] = (shape, _bf16(count, rng, ones=name.endswith("layernorm.weight") or name == "model.norm.weight"))
    write_safetensors(out / "model-00000-of-00001.safetensors", tensors)
    total = sum(len(d) for _s, d in tensors.values())
    index = {"metadata": {"total_size": total},
             "weight_map": dict.fromkeys(tensors, "model-00000-of-00001.safetensors")}
    files = {
        "config.json": _config(len(vocab)),
        "generation_config.json": {"bos_token_id": 0, "eos_token_id": [1, 2], "pad_token_id": 3,
                                   "do_sample": True, "transformers_version": "4.55.0"},
        "model.safetensors.index.json": index,
        "tokenizer.json": _tokenizer(vocab),
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0],
                                  "eos_token": SPECIALS[1], "pad_token": SPECIALS[3], "unk_token": SPECIALS[3],
                                  "model_max_length": 4096},
        "special_tokens_map.json": {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "pad_token": SPECIALS[3]},
    }
    for name, doc in files.items():
        (out / name).write_text(json.dumps(doc, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "LICENSE").write_text("Apache License, Version 2.0 - tiny demo model generated by gptossctl\n")
    (out / "USAGE_POLICY").write_text("Demo weights: random, for testing the deployment path only.\n")
    # What a careless snapshot would also bring: packs must leave these out.
    (out / "original").mkdir(exist_ok=True)
    (out / "original" / "config.json").write_text("{}\n")
    (out / "metal").mkdir(exist_ok=True)
    (out / "metal" / "model.bin").write_bytes(b"\0" * 1024)
    return out
