"""Real parts for pack tests: a tiny GptOssForCausalLM made with transformers, a tokenizer trained
with tokenizers, a real Hugging Face cache layout, and wheels built with pip from projects made here."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def make_hf_model(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GptOssConfig, GptOssForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>", "<|return|>"])
    tok.train_from_iterator(["the capital of france is paris", "gpt-oss runs offline on vllm"] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")
    config = GptOssConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                          num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=4096,
                          sliding_window=128, layer_types=["sliding_attention", "full_attention"],
                          eos_token_id=1, pad_token_id=1)
    GptOssForCausalLM(config).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    (out / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (out / "LICENSE").write_text("Apache License 2.0\n")
    (out / "USAGE_POLICY").write_text("Use responsibly.\n")
    (out / "original").mkdir()
    (out / "original" / "model.safetensors").write_bytes(os.urandom(4096))
    (out / "metal").mkdir()
    (out / "metal" / "model.bin").write_bytes(os.urandom(4096))
    return out


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp("hf") / "tiny-gpt-oss")


def make_hf_cache(model: Path, cache: Path, repo: str, commit: str) -> Path:
    """The layout huggingface_hub writes: blobs by digest, snapshots/<commit> of links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for p in sorted(model.rglob("*")):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            blob = root / "blobs" / digest
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, blob)
            link = root / "snapshots" / commit / p.relative_to(model)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return cache


def build_wheel(workdir: Path, house: Path, name: str, version: str, *, requires: tuple[str, ...] = (),
                license: str = "MIT") -> Path:
    """A real wheel of a real (tiny) project, built by pip with the hatchling backend, offline."""
    proj = workdir / f"{name}-{version}"
    mod = name.replace("-", "_")
    (proj / mod).mkdir(parents=True)
    (proj / mod / "__init__.py").write_text(f'__version__ = "{version}"\n')
    reqs = ", ".join(f'"{r}"' for r in requires)
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\nlicense = "{license}"\ndependencies = [{reqs}]\n'
        f'[tool.hatch.build.targets.wheel]\npackages = ["{mod}"]\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(house), str(proj)], check=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    (whl,) = house.glob(f"{mod}-{version}-*.whl")
    return whl


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vllm 0.33.0 (a stand-in with vLLM's real pins), its closure, and FlashInfer kernels."""
    work, house = tmp_path_factory.mktemp("projects"), tmp_path_factory.mktemp("wheelhouse")
    build_wheel(work, house, "vllm", "0.33.0", license="Apache-2.0",
                requires=("flashinfer-python==0.7.2.post1", "tinydep>=1.0", "nvidia-cuda-runtime==13.0.96"))
    build_wheel(work, house, "flashinfer-python", "0.7.2.post1", license="Apache-2.0")
    build_wheel(work, house, "tinydep", "1.2.0", requires=("copyleftdep",))
    build_wheel(work, house, "copyleftdep", "2.0", license="GPL-3.0-only")
    build_wheel(work, house, "nvidia-cuda-runtime", "13.0.96", license="LicenseRef-NVIDIA-Proprietary")
    return house


@pytest.fixture(scope="session")
def kernels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work, house = tmp_path_factory.mktemp("kprojects"), tmp_path_factory.mktemp("kernels")
    build_wheel(work, house, "flashinfer-cubin", "0.7.2.post1", license="Apache-2.0")
    build_wheel(work, house, "flashinfer-jit-cache", "0.7.2.post1", license="Apache-2.0")
    return house
