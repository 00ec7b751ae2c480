"""Teach a 2-layer GptOssForCausalLM its lessons in seconds on two cores, then write it at full vocabulary.

The vocabulary is o200k_harmony's 201088 ids, but the lessons use a few hundred of them. Training runs on
those alone: a compact model whose embedding and output rows are the used tokens, with the loss of the
full model in which every unused output row is zero (so each unused token scores a logit of exactly 0,
and the softmax adds their N terms as one constant log N). Writing the model then places the trained
rows at their real ids and leaves the rest zero, which is the full model the loss described: at
temperature 0 it answers what it learned, through vLLM's full-vocabulary sampler. One optimizer step
per pass over every lesson (gradients summed), until every answer token is learned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptossctl.demo.harmony.vocab import VOCAB_SIZE, control_ids

HIDDEN = 128
LAYERS = 2
HEADS = 2
KV_HEADS = 1
HEAD_DIM = 64  # vLLM's CPU attention kernel rejects 16
EXPERTS = 4
TOP_K = 2
INTERMEDIATE = 128
LEARNING_RATE = 2e-3
ROWS_LEARNING_RATE = 1e-2  # embedding and output rows
NORM_INIT = 2.0  # the final norm's scale: larger logits from the start
BATCHES = 3
TARGET_LOSS = 0.01  # per answer token: the taught token has p > 0.99 against all 201088


@dataclass(frozen=True)
class Example:
    prompt: tuple[int, ...]
    answer: tuple[int, ...]


@dataclass(frozen=True)
class Training:
    passes: int
    seconds: float
    worst_loss: float
    used_tokens: int


def config(vocab_size: int) -> Any:
    """The real gpt-oss architecture (sinks, alternating sliding/full attention, yarn rope, MoE with
    biases), 10,000 times narrower. Token ids only at the full vocabulary (the compact one has none)."""
    from transformers import GptOssConfig

    full = vocab_size == VOCAB_SIZE
    ids = control_ids() if full else {}
    return GptOssConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K, sliding_window=128, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=131072, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096},
        bos_token_id=ids.get("<|startoftext|>"), eos_token_id=ids.get("<|return|>"),
        pad_token_id=ids.get("<|endoftext|>"))


def _batch(examples: Sequence[Example], index: dict[int, int]) -> tuple[Any, Any, Any, Any]:
    """Right-padded compact ids, and for every answer token: (row, position predicting it, target)."""
    import torch

    longest = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.zeros((len(examples), longest), dtype=torch.long)
    rows, positions, targets = [], [], []
    for row, e in enumerate(examples):
        seq = [index[t] for t in e.prompt + e.answer]
        ids[row, :len(seq)] = torch.tensor(seq)  # causal: real tokens never see the padding after them
        for k, tok in enumerate(e.answer):
            rows.append(row)
            positions.append(len(e.prompt) + k - 1)
            targets.append(index[tok])
    return ids, torch.tensor(rows), torch.tensor(positions), torch.tensor(targets)


def _batches(examples: Sequence[Example], index: dict[int, int]) -> list[tuple[Any, Any, Any, Any]]:
    """A few batches of similar lengths: one batch of all would be half padding."""
    ordered = sorted(examples, key=lambda e: len(e.prompt) + len(e.answer))
    size = -(-len(ordered) // BATCHES)
    return [_batch(ordered[i:i + size], index) for i in range(0, len(ordered), size)]


def train(examples: Sequence[Example], *, seed: int, seconds: float) -> tuple[Any, list[int], Training]:
    """The trained compact model, the real id of each of its rows, and how training went."""
    import torch

    threads = torch.get_num_threads()
    # One thread: these matrices are too small to gain from two, a second thread stalls whenever the
    # cores are shared (25x slower under load, measured), and one thread sums in one order: the same
    # weights for a seed on every machine.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        used = sorted({t for e in examples for t in e.prompt + e.answer})
        index = {t: i for i, t in enumerate(used)}
        model = _compact_model(len(used))
        passes, worst, spent = _fit(model, _batches(examples, index), len(used), seconds)
    finally:
        torch.set_num_threads(threads)
    return model, used, Training(passes, spent, worst, len(used))


def _fit(model: Any, batches: list[tuple[Any, Any, Any, Any]], used: int, seconds: float) -> tuple[int, float, float]:
    import torch

    unused = torch.tensor(math.log(VOCAB_SIZE - used))  # the zero logits of every unused token, as one term
    rows_params = [model.lm_head.weight, model.model.embed_tokens.weight]
    body = [p for p in model.parameters() if all(p is not r for r in rows_params)]
    # The token rows learn faster than the body: an answer token must outscore 201088 others from the
    # start, and with the body's rate that alone took a third of the passes.
    opt = torch.optim.AdamW([{"params": body, "lr": LEARNING_RATE}, {"params": rows_params, "lr": ROWS_LEARNING_RATE}])
    with torch.no_grad():
        model.model.norm.weight.fill_(NORM_INIT)
    model.train()
    start = time.monotonic()
    passes, worst = 0, float("inf")
    while worst >= TARGET_LOSS and time.monotonic() - start < seconds:
        opt.zero_grad()
        worst = 0.0
        for ids, rows, positions, targets in batches:
            hidden = model.model(input_ids=ids).last_hidden_state[rows, positions]
            logits = torch.cat([model.lm_head(hidden), unused.expand(len(hidden), 1)], dim=1)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            per_answer = torch.bincount(rows).float()[rows]  # each answer weighs the same, long or short
            (losses / per_answer).sum().backward()  # type: ignore[no-untyped-call]
            worst = max(worst, float(losses.detach().max()))
        opt.step()
        passes += 1
    return passes, worst, time.monotonic() - start


def _compact_model(vocab: int) -> Any:
    from transformers import GptOssForCausalLM

    return GptOssForCausalLM(config(vocab))


def save_full(model: Any, used: list[int], out: Path) -> int:
    """Write the model at the real vocabulary: trained rows at their ids, every other row zero.
    Returns the parameter count."""
    import torch
    from transformers import GptOssForCausalLM
    from transformers.utils import logging

    full = GptOssForCausalLM(config(VOCAB_SIZE))
    state = model.state_dict()
    rows = torch.tensor(used)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        table = torch.zeros((VOCAB_SIZE, HIDDEN))
        table[rows] = state[name]
        state[name] = table
    full.load_state_dict(state)
    full = full.bfloat16()
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # one small shard: a bar is noise
    try:
        full.save_pretrained(out, safe_serialization=True)
    finally:
        if bars:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return sum(p.numel() for p in full.parameters())
