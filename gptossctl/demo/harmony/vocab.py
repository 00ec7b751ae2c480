"""The o200k_harmony vocabulary, offline: rebuilt from the harmony encoding that vLLM installs.

oss-harmony 0.0.11 (import name `openai_harmony`; vLLM pins >= 0.0.11) embeds the o200k vocab in its
Rust extension and needs no download. Decoding every ordinary token id (0..199997) to its bytes,
losslessly through `errors="surrogateescape"`, and writing `base64(bytes) rank` per line gives back
`o200k_base.tiktoken` byte for byte: its SHA-256 is the published one, which openai-harmony checks when
it reads the file from `TIKTOKEN_ENCODINGS_BASE`. The same ranks give the Hugging Face
`tokenizer.json` (byte-level BPE: every split of a token into two tokens is a merge, ranked by the merged
token, as tiktoken merges the lowest-ranked pair first), and the special tokens (<|start|>, <|channel|>,
...) keep harmony's ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed, EnvironmentNotReady
from gptossctl.pack.assets import VOCAB_SHA256

VOCAB_SIZE = 201088  # the model's embedding rows: ordinary tokens and harmony's specials below this id
ORDINARY = 199998  # ids 0..199997 are byte-pair tokens; 199998 and up are special
VOCAB_FILE = "o200k_base.tiktoken"
# o200k's pre-tokenizer (tiktoken_ext.openai_public.o200k_base, which harmony's o200k_harmony extends).
PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The names harmony gives its control tokens; the rest of the special range is <|reserved_N|>.
CONTROL = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
           "<|end|>", "<|message|>", "<|call|>")


@cache
def harmony() -> Any:
    """The `openai_harmony` module (the oss-harmony distribution vLLM installs), imported here only."""
    try:
        import openai_harmony  # type: ignore[import-untyped]
    except ImportError:
        raise EnvironmentNotReady("the harmony encoding is not installed", code="demo.no_harmony",
                                  hint="pip install 'gptossctl[demo]' (it brings oss-harmony)") from None
    return openai_harmony


@cache
def encoding() -> Any:
    """The harmony encoding vLLM renders gpt-oss prompts with (embedded vocab: no download)."""
    h = harmony()
    return h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)


def token_bytes(token_id: int) -> bytes:
    """The exact bytes of one token: surrogateescape keeps the bytes of a partial UTF-8 sequence."""
    return str(encoding().decode([token_id], errors="surrogateescape")).encode("utf-8", "surrogateescape")


@cache
def special_tokens() -> dict[str, int]:
    """Every special token harmony knows that fits the model's vocabulary, by name."""
    enc = encoding()
    ids = {name: enc.encode(name, allowed_special="all")[0] for name in enc.special_tokens_set}
    return dict(sorted(((n, i) for n, i in ids.items() if i < VOCAB_SIZE), key=lambda kv: kv[1]))


@cache
def control_ids() -> dict[str, int]:
    specials = special_tokens()
    return {name: specials[name] for name in CONTROL}


def write_vocab(dest_dir: Path) -> Path:
    """Write `o200k_base.tiktoken` into `dest_dir` and prove it is the published file (SHA-256)."""
    data = b"".join(base64.b64encode(token_bytes(i)) + b" %d\n" % i for i in range(ORDINARY))
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256["o200k_base"]:
        raise CheckFailed(f"the vocab rebuilt from the harmony encoding has SHA-256 {digest}, not the published "
                          f"{VOCAB_SHA256['o200k_base']}", code="demo.vocab_mismatch",
                          hint="use the oss-harmony version vLLM pins (>= 0.0.11), or ship the downloaded file")
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / VOCAB_FILE
    path.write_bytes(data)
    return path


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for bytes, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _vocab_and_merges(ranks: Mapping[bytes, int]) -> tuple[dict[str, int], list[list[str]]]:
    to_text = _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_text[x] for x in b)

    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return {text(t): r for t, r in ranks.items()}, [[text(a), text(b)] for *_r, a, b in merges]


def tokenizer_json() -> dict[str, Any]:
    """The Hugging Face fast-tokenizer document for o200k_harmony, from the embedded ranks."""
    vocab, merges = _vocab_and_merges({token_bytes(i): i for i in range(ORDINARY)})
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for name, i in special_tokens().items()]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        # ignore_merges: a pre-token that is itself in the vocabulary is one token, as in tiktoken.
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def write_tokenizer(out: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json as the gpt-oss repositories
    lay them out: bos <|startoftext|>, eos <|return|>, pad <|endoftext|>."""
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(), ensure_ascii=False))
    names = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072, "clean_up_tokenization_spaces": False,
         **names}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
