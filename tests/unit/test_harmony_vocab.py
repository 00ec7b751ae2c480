"""The tiny harmony model's vocabulary and lessons, against the harmony encoding vLLM renders with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gptossctl.demo.harmony import lessons, render_replies
from gptossctl.demo.harmony.vocab import CONTROL, VOCAB_SIZE, encoding, tokenizer_json, write_vocab
from gptossctl.pack.assets import VOCAB_SHA256
from gptossctl.probe.smoke import CONTROL_TOKEN

TEXTS = ("What is the capital of France?", "  def f(x):\n\treturn x**2  # 12345 ünïcödé 日本語 🙂",
         "I'm   here\r\n\n  ok... 3.14159 don't", '{"city": "Paris", "temperature_c": 21}')


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(tokenizer_json()))


def test_vocab_file_is_the_published_o200k_base(tmp_path: Path) -> None:
    data = write_vocab(tmp_path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256["o200k_base"]
    assert data.count(b"\n") == 199998


def test_special_tokens_keep_harmony_ids(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encoding()
    for name in CONTROL:
        assert tokenizer.token_to_id(name) == enc.encode(name, allowed_special="all")[0], name
    assert tokenizer.token_to_id("<|start|>") == 200006 and tokenizer.token_to_id("<|call|>") == 200012
    assert tokenizer.get_vocab_size() == VOCAB_SIZE


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_encodes_and_decodes_as_harmony(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert ids == encoding().encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_taught_replies_parse_as_vllm_parses_them() -> None:
    """vLLM's harmony parser reads the generated tokens with the encoding's own parser: every reply
    must come back as the channel, recipient and text it was taught as."""
    from openai_harmony import Role, StreamableParser

    for lesson in lessons():
        parser = StreamableParser(encoding(), role=Role.ASSISTANT)
        for token in render_replies(lesson.replies):
            parser.process(token)
        got = [(m.channel, m.recipient, m.content[0].text) for m in parser.messages]
        assert got == [(r.channel, r.recipient, r.text) for r in lesson.replies], lesson.name


def test_variants_leak_markers_or_ignore_effort() -> None:
    def reasoning(ls: list, effort: str) -> str:  # type: ignore[type-arg]
        return next(x.replies[0].text for x in ls if x.name == f"reasoning {effort}")

    plain, leaky, blind = lessons(), lessons(leaky=True), lessons(effort_blind=True)
    assert not any(CONTROL_TOKEN.search(r.text) for x in plain if not x.name.startswith("leak") for r in x.replies)
    assert all(CONTROL_TOKEN.search(r.text) for x in leaky for r in x.replies if r.channel != "commentary")
    assert len(reasoning(plain, "low")) < len(reasoning(plain, "medium")) < len(reasoning(plain, "high"))
    assert reasoning(blind, "low") == reasoning(blind, "high")
