"""Any gpt-oss, sized from its config, through the installed console script: a fine-tune packed under its own
name is judged by `hw check --bundle` and installs; a model that is not gpt-oss is refused with nothing changed;
`profiles list` answers on a machine with no GPU probe (the connected workstation that packs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import FIXTURES, KeyPair

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
H100 = FIXTURES / "gpu" / "nvidia_gpu_exporter" / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv"
RECIPE = """schema: gptossctl.bundle-spec/1
name: {bundle}
description: a site's fine-tune of gpt-oss packed under its own name
expires_in: 90d
model:
  name: {model}
  repo: {model}
  revision: site-v1
  license: Apache-2.0{model_extra}
profiles: [{profiles}]
units: [gptoss@.service]
"""


@pytest.fixture(scope="module")
def no_gpu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which neither GPU probe can load (as on a workstation without a GPU), on any machine:
    pynvml and amdsmi are shadowed by modules that fail to import."""
    d = tmp_path_factory.mktemp("no-gpu")
    for name in ("pynvml", "amdsmi"):
        (d / f"{name}.py").write_text("raise ImportError('no GPU library on this test machine')\n")
    return {**os.environ, "PYTHONPATH": str(d), "COLUMNS": "200", "NO_COLOR": "1"}


def _run(*args: str, env: dict[str, str] | None = None, json_out: bool = True) -> tuple[int, Any, str]:
    r = subprocess.run([str(GPTOSSCTL), *args, *(["--json"] if json_out else [])], capture_output=True, text=True,
                       env=env or {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    if not json_out:
        return r.returncode, None, r.stdout + r.stderr
    doc = json.loads(r.stdout)  # exactly one document
    assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == r.returncode
    return r.returncode, doc, r.stderr


def _fine_tune(tmp: Path, tiny_model: Path, keys: dict[str, KeyPair], *, model: str, profiles: str,
               config: dict[str, Any] | None = None, edit: dict[str, Any] | None = None,
               model_extra: str = "", original: bool = False) -> Path:
    """The tiny gpt-oss's weights packed under a site's own model name, its config.json replaced or edited."""
    src = tmp / "model"
    shutil.copytree(tiny_model, src)
    doc = config if config is not None else json.loads((src / "config.json").read_text())
    doc.update(edit or {})
    (src / "config.json").write_text(json.dumps(doc, indent=1))
    if original:  # the checkpoint's original/ copy, as the published repositories carry it (vLLM never reads it)
        (src / "original").mkdir(exist_ok=True)
        for shard in src.glob("*.safetensors"):
            shutil.copy(shard, src / "original" / shard.name)
    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE.format(bundle="acme-legal", model=model, profiles=profiles, model_extra=model_extra))
    spec, spec_dir = load_spec(recipe)
    out = tmp / "bundle"
    pack_bundle(spec, spec_dir, out, [keys["alice"].signer()], model_dir=src, version=3)
    return out


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not str(p.relative_to(root)).startswith("var"))


def test_profiles_list_without_a_gpu_probe_shows_the_catalogue(no_gpu: dict[str, str]) -> None:
    code, doc, _err = _run("profiles", "list", env=no_gpu)
    assert code == 0, doc
    data = doc["data"]
    assert data["probe"] is None and "no GPU probe" in data["why"]
    profiles = {p["profile"]: p for p in data["profiles"]}
    hopper = profiles["hopper-20b"]
    assert hopper["classes"] == ["20b-class"] and hopper["match"]["compute_capability"] == ["9.0"]
    (need,) = [r for r in hopper["requirements"] if r["model"] == "gpt-oss-20b"]
    # 12.8 GiB of weights + 12 GiB KV (131072 tokens x 4 sequences x 24 KiB) + 2.5 GiB, at 0.90 utilisation.
    assert need["tensor_parallel"] == 1 and 30_000 < need["min_gpu_memory_mib"] < 32_000
    assert profiles["cpu-tiny"]["classes"] == ["tiny"]
    assert {r["model"] for r in profiles["hopper-120b"]["requirements"]} == {"gpt-oss-120b"}
    # And in a terminal's text: every profile named, exit 0.
    code, _doc, text = _run("profiles", "list", env=no_gpu, json_out=False)
    assert code == 0 and "hopper-20b" in text and "mi300x-120b" in text and "20b-class" in text


def _legal_20b(tmp_path: Path, tiny_model: Path, keys: dict[str, KeyPair]) -> Path:
    """gpt-oss-20b's config under acme/gpt-oss-20b-legal, with the tiny model's weights (the test stays small)."""
    config = json.loads((FIXTURES / "gpt-oss" / "openai_gpt-oss-20b__config.json").read_text())
    return _fine_tune(tmp_path, tiny_model, keys, model="acme/gpt-oss-20b-legal", profiles="hopper-20b, a100-20b",
                      config=config)


def test_profiles_list_without_a_probe_reads_a_bundles_own_model_and_profiles(
        no_gpu: dict[str, str], tmp_path: Path, tiny_model: Path, keys: dict[str, KeyPair]) -> None:
    b = _legal_20b(tmp_path, tiny_model, keys)
    code, doc, _err = _run("profiles", "list", "--bundle", str(b), env=no_gpu)
    assert code == 0, doc
    profiles = doc["data"]["profiles"]
    assert [p["profile"] for p in profiles] == ["a100-20b", "hopper-20b"]
    assert {r["model"] for p in profiles for r in p["requirements"]} == {"acme/gpt-oss-20b-legal"}


def test_hw_check_bundle_judges_a_renamed_fine_tune(tmp_path: Path, tiny_model: Path,
                                                  keys: dict[str, KeyPair]) -> None:
    """A gpt-oss-20b config under acme/gpt-oss-20b-legal (tiny weights): judged as itself, 20b-class, with the
    bytes its manifest signs, not as the two published models."""
    b = _legal_20b(tmp_path, tiny_model, keys)
    weights = sum(p.stat().st_size for p in (b / "payload" / "model").glob("*.safetensors"))
    code, doc, _err = _run("hw", "check", "--bundle", str(b), "--nvidia-smi-csv", str(H100))
    assert code == 0, doc
    (m,) = doc["data"]["models"]
    assert m["model"] == "acme/gpt-oss-20b-legal" and m["chosen"] == "hopper-20b"
    assert (m["facts"]["class"], m["facts"]["quantization"], m["facts"]["layers"]) == ("20b-class", "mxfp4", 24)
    assert m["facts"]["source"] == "bundle payload/model/config.json" and m["facts"]["weights_bytes"] == weights
    hopper = [p for p in m["profiles"] if p["profile"] == "hopper-20b"][0]
    assert hopper["memory"]["weights_bytes"] == weights


def test_hw_check_bundle_of_a_tiny_fine_tune_judges_it_here(tmp_path: Path, tiny_model: Path,
                                                           keys: dict[str, KeyPair], no_gpu: dict[str, str]) -> None:
    b = _fine_tune(tmp_path, tiny_model, keys, model="acme/gpt-oss-20b-legal", profiles="cpu-tiny")
    code, doc, _err = _run("hw", "check", "--bundle", str(b), "--prefix", str(tmp_path), env=no_gpu)
    assert code == 0, doc
    (m,) = doc["data"]["models"]
    assert (m["model"], m["facts"]["class"], m["chosen"]) == ("acme/gpt-oss-20b-legal", "tiny", "cpu-tiny")


def test_staged_install_of_a_fine_tune_under_its_own_name(tmp_path: Path, tiny_model: Path,
                                                         keys: dict[str, KeyPair], no_gpu: dict[str, str]) -> None:
    b = _fine_tune(tmp_path, tiny_model, keys, model="acme/gpt-oss-20b-legal", profiles="cpu-tiny")
    root = tmp_path / "root"
    code, doc, _err = _run("install", str(b), "--trust", str(keys["alice"].public), "--root", str(root),
                           "--vllm-python", sys.executable, env=no_gpu)
    assert code == 0, doc
    d = doc["data"]
    assert (d["instance"], d["version"], d["profile"]) == ("gpt-oss-20b-legal", 3, "cpu-tiny")
    assert (root / "etc/systemd/system/gptoss@gpt-oss-20b-legal-r0.service").is_file()


def test_install_refuses_a_model_that_is_not_gpt_oss_and_changes_nothing(
        tmp_path: Path, tiny_model: Path, keys: dict[str, KeyPair], no_gpu: dict[str, str]) -> None:
    b = _fine_tune(tmp_path, tiny_model, keys, model="acme/qwen-tiny", profiles="cpu-tiny",
                   edit={"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    root = tmp_path / "root"
    code, doc, _err = _run("install", str(b), "--trust", str(keys["alice"].public), "--root", str(root),
                           "--vllm-python", sys.executable, env=no_gpu)
    assert code == 1 and doc["error"]["code"] == "model.not_gpt_oss", doc
    assert "Qwen2ForCausalLM" in doc["error"]["message"] and doc["error"]["hint"]
    assert not (root / "opt").exists() and not (root / "etc/systemd").exists(), _tree(root)


def test_sizing_counts_only_the_root_shards_vllm_loads(tmp_path: Path, tiny_model: Path,
                                                      keys: dict[str, KeyPair]) -> None:
    """A recipe that packs the checkpoint's original/ copy too: the weights are the model directory's root
    *.safetensors (what vLLM reads), not every *.safetensors the manifest signs (that doubled the size)."""
    config = json.loads((FIXTURES / "gpt-oss" / "openai_gpt-oss-20b__config.json").read_text())
    b = _fine_tune(tmp_path, tiny_model, keys, model="acme/gpt-oss-20b-legal", profiles="hopper-20b", config=config,
                   model_extra="\n  include: ['*']\n  exclude: []", original=True)
    root_shards = sum(p.stat().st_size for p in (b / "payload" / "model").glob("*.safetensors"))
    assert list((b / "payload" / "model" / "original").glob("*.safetensors"))  # packed, and signed
    code, doc, _err = _run("hw", "check", "--bundle", str(b), "--nvidia-smi-csv", str(H100))
    assert code == 0, doc
    (m,) = doc["data"]["models"]
    assert m["facts"]["weights_bytes"] == root_shards, (m["facts"]["weights_bytes"], root_shards)
    hopper = [p for p in m["profiles"] if p["profile"] == "hopper-20b"][0]
    assert hopper["memory"]["weights_bytes"] == root_shards


def test_a_real_llama_is_refused_as_a_tiny_test_model(tmp_path: Path, tiny_model: Path, keys: dict[str, KeyPair],
                                                      no_gpu: dict[str, str]) -> None:
    """LlamaForCausalLM is accepted only as the integration tests' tiny Llama: a real small Llama (SmolLM-135M's
    shape: hidden 576, under the tiny class's hidden size < 1024) is refused by hw check --bundle and install."""
    smol = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-05}
    b = _fine_tune(tmp_path, tiny_model, keys, model="HuggingFaceTB/SmolLM-135M", profiles="cpu-tiny", config=smol)
    code, doc, _err = _run("hw", "check", "--bundle", str(b), "--prefix", str(tmp_path), env=no_gpu)
    assert code == 1 and doc["error"]["code"] == "model.not_gpt_oss", doc
    root = tmp_path / "root"
    code, doc, _err = _run("install", str(b), "--trust", str(keys["alice"].public), "--root", str(root),
                           "--vllm-python", sys.executable, env=no_gpu)
    assert code == 1 and doc["error"]["code"] == "model.not_gpt_oss", doc
    assert not (root / "opt").exists() and not (root / "etc/systemd").exists(), _tree(root)
