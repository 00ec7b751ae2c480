"""Pack real bundles offline: a transformers-made gpt-oss, a real HF cache, pip-built wheels for a
target platform, FlashInfer pins, vocab digests, the SBOM, dry runs and every refusal."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gptossctl.errors import CheckFailed
from gptossctl.pack.assets import fetch_vocab
from gptossctl.pack.sources import select_files
from gptossctl.pack.spec import DEFAULT_MODEL_EXCLUDE, DEFAULT_MODEL_INCLUDE
from tests.conftest import FIXTURES, PASSPHRASE, KeyPair
from tests.integration.conftest import build_wheel, make_hf_cache

pytestmark = pytest.mark.integration
ENV = {"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_recipe(d: Path, **parts: Any) -> Path:
    doc: dict[str, Any] = {"schema": "gptossctl.bundle-spec/1", "name": "tiny-real", "expires_in": "30d",
                           "model": {"name": "gptossctl/tiny-gpt-oss", "repo": "gptossctl/tiny-gpt-oss",
                                     "revision": "main"}}
    for k, v in parts.items():
        if k == "source":
            doc["model"]["source"] = v
        elif k == "revision":
            doc["model"]["revision"] = v
        else:
            doc[k] = v
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def pack(cli, recipe: Path, out: Path, keys: dict[str, KeyPair], *extra: str):  # type: ignore[no-untyped-def]
    return cli("bundle", "pack", str(recipe), "--out", str(out), "--key", str(keys["alice"].private), *extra, env=ENV)


def verify(cli, out: Path, keys: dict[str, KeyPair]):  # type: ignore[no-untyped-def]
    return cli("bundle", "verify", str(out), "--trust", str(keys["alice"].public))


# ---- what vLLM reads, against the real repository listings

@pytest.mark.parametrize("repo, shards", [("openai_gpt-oss-20b", 3), ("openai_gpt-oss-120b", 15)])
def test_recipes_select_exactly_what_vllm_reads(repo: str, shards: int) -> None:
    listing = json.loads((FIXTURES / "gpt-oss" / f"{repo}__hf-api-models.json").read_text())
    names = [s["rfilename"] for s in listing["siblings"]]
    selected = select_files(names, DEFAULT_MODEL_INCLUDE, DEFAULT_MODEL_EXCLUDE)
    expected = {"model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "LICENSE", "USAGE_POLICY"}
    assert set(selected) - expected == {n for n in names if n.startswith("model-") and "/" not in n}
    assert len([n for n in selected if n.endswith(".safetensors")]) == shards
    assert expected <= set(selected)
    assert not any(n.startswith(("original/", "metal/")) or n in (".gitattributes", "README.md") for n in selected)


# ---- model sources

def test_pack_from_transformers_model_directory(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    code, doc = pack(cli, write_recipe(tmp_path), tmp_path / "b", keys, "--model-dir", str(hf_model))
    assert code == 0, doc
    files = {f["path"] for f in json.loads((tmp_path / "b" / "manifest.json").read_text())["files"]}
    assert "model/model.safetensors" in files and "model/tokenizer.json" in files
    assert not any("original" in f or "metal" in f for f in files)
    assert verify(cli, tmp_path / "b", keys)[0] == 0
    assert not (tmp_path / "b.scratch").exists()


def test_pack_from_hf_cache_records_the_resolved_commit(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    make_hf_cache(hf_model, tmp_path / "hf-cache", "gptossctl/tiny-gpt-oss", COMMIT)
    recipe = write_recipe(tmp_path, source={"hf_cache": "hf-cache"})
    code, doc = pack(cli, recipe, tmp_path / "b", keys)
    assert code == 0, doc
    model = json.loads((tmp_path / "b" / "manifest.json").read_text())["components"]["model"]
    assert (model["revision"], model["requested_revision"], model["source"]) == (COMMIT, "main", "hf_cache")
    # Snapshot entries are links into blobs/: the bundle holds the bytes, as regular files.
    weights = tmp_path / "b" / "payload" / "model" / "model.safetensors"
    assert weights.is_file() and not weights.is_symlink()
    assert verify(cli, tmp_path / "b", keys)[0] == 0


def test_unknown_revision_in_cache_is_refused(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    make_hf_cache(hf_model, tmp_path / "hf-cache", "gptossctl/tiny-gpt-oss", COMMIT)
    code, doc = pack(cli, write_recipe(tmp_path, source={"hf_cache": "hf-cache"}, revision="v9"), tmp_path / "b", keys)
    assert code == 1 and doc["error"]["code"] == "pack.revision_not_found"
    assert not (tmp_path / "b").exists()


def test_model_missing_a_required_file_is_refused(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "m"
    shutil.copytree(hf_model, model)
    (model / "USAGE_POLICY").unlink()
    code, doc = pack(cli, write_recipe(tmp_path), tmp_path / "b", keys, "--model-dir", str(model))
    assert code == 1 and doc["error"]["code"] == "pack.model_incomplete"
    assert [f["subject"] for f in doc["findings"]] == ["USAGE_POLICY"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


# ---- wheels for the target

WHEELS = {"include_gptossctl": False, "include_uv": False}


def test_pack_wheels_for_target_with_kernels_and_sbom(cli, tmp_path: Path, hf_model: Path, keys,  # type: ignore[no-untyped-def]
                                                      wheelhouse: Path, kernels_dir: Path) -> None:
    recipe = write_recipe(tmp_path, vllm={"version": "0.33.0"}, wheels={**WHEELS, "dir": str(wheelhouse)},
                          kernels={"dir": str(kernels_dir)})
    code, doc = pack(cli, recipe, tmp_path / "b", keys, "--model-dir", str(hf_model))
    assert code == 0, doc
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    comps = manifest["components"]
    assert comps["wheels"]["cuda"] == "13.0" and comps["wheels"]["platform"] == "manylinux_2_28_x86_64"
    assert comps["kernels"]["flashinfer"] == "0.7.2.post1"
    flagged = {f["name"]: f["license"] for f in comps["wheels"]["licenses"]["flagged"]}
    assert flagged == {"copyleftdep": "GPL-3.0-only", "nvidia-cuda-runtime": "LicenseRef-NVIDIA-Proprietary"}
    wheel_files = sorted(f["path"] for f in manifest["files"] if f["component"] in ("wheels", "kernels"))
    assert [Path(p).name.split("-")[0] for p in wheel_files] == [
        "flashinfer_cubin", "flashinfer_jit_cache", "copyleftdep", "flashinfer_python", "nvidia_cuda_runtime",
        "tinydep", "vllm"]
    # The SBOM validates against CycloneDX 1.6 and carries the same digests as the manifest.
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    sbom_text = (tmp_path / "b" / "payload" / "sbom" / "bom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom_text) is None
    sbom = json.loads(sbom_text)
    by_file = {f["path"].split("/")[-1]: f["sha256"] for f in manifest["files"]}
    for c in sbom["components"]:
        if c["type"] == "library":
            file_name = c["purl"].split("file_name=")[1]
            assert c["hashes"][0]["content"] == by_file[file_name]
    model = [c for c in sbom["components"] if c["type"] == "machine-learning-model"][0]
    assert model["name"] == "gptossctl/tiny-gpt-oss" and model["licenses"][0]["license"]["id"] == "Apache-2.0"
    assert verify(cli, tmp_path / "b", keys)[0] == 0


def test_flashinfer_kernel_mismatch_is_refused(cli, tmp_path: Path, hf_model: Path, keys, wheelhouse: Path) -> None:  # type: ignore[no-untyped-def]
    wrong = tmp_path / "kernels"
    build_wheel(tmp_path / "p", wrong, "flashinfer-cubin", "0.6.13", license="Apache-2.0")
    build_wheel(tmp_path / "p", wrong, "flashinfer-jit-cache", "0.7.2.post1", license="Apache-2.0")
    recipe = write_recipe(tmp_path, vllm={"version": "0.33.0"}, wheels={**WHEELS, "dir": str(wheelhouse)},
                          kernels={"dir": str(wrong)})
    code, doc = pack(cli, recipe, tmp_path / "b", keys, "--model-dir", str(hf_model))
    assert code == 1 and doc["error"]["code"] == "pack.flashinfer_mismatch"
    assert [f["code"] for f in doc["findings"]] == ["kernels.flashinfer_mismatch"]
    assert "0.6.13" in doc["findings"][0]["message"]
    assert not (tmp_path / "b").exists()


def test_no_wheel_for_target_platform_is_refused(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    house = tmp_path / "house"
    built = build_wheel(tmp_path / "p", house, "vllm", "0.33.0", requires=("fastlib==1.0",))
    lib = build_wheel(tmp_path / "p", house, "fastlib", "1.0")
    # fastlib exists only as a CPython 3.10 wheel for aarch64: nothing for the 3.12 x86_64 target.
    lib.rename(house / "fastlib-1.0-cp310-cp310-manylinux_2_17_aarch64.whl")
    assert built.exists()
    recipe = write_recipe(tmp_path, vllm={"version": "0.33.0"}, wheels={**WHEELS, "dir": str(house)},
                          kernels={"flashinfer": False})
    code, doc = pack(cli, recipe, tmp_path / "b", keys, "--model-dir", str(hf_model))
    assert code == 1 and doc["error"]["code"] == "pack.no_wheel_for_target"
    assert doc["findings"][0]["subject"].startswith("fastlib")
    assert "manylinux_2_28_x86_64" in doc["error"]["message"]


def test_vllm_older_than_gpt_oss_support_is_refused(cli, tmp_path: Path, keys) -> None:  # type: ignore[no-untyped-def]
    code, doc = pack(cli, write_recipe(tmp_path, vllm={"version": "0.10.0"}), tmp_path / "b", keys)
    assert code == 2 and doc["error"]["code"] == "spec.invalid"
    assert "predates gpt-oss support" in doc["error"]["hint"] and "line" in doc["error"]["hint"]


def test_gptossctl_builds_its_own_wheel_offline(tmp_path: Path) -> None:
    from gptossctl.pack.gather import _self_wheel
    from gptossctl.pack.wheels import read_wheel

    w = read_wheel(_self_wheel(tmp_path))
    assert w.name == "gptossctl" and any(r.startswith("cryptography") for r in w.requires)
    import zipfile

    names = zipfile.ZipFile(w.path).namelist()
    assert "gptossctl/_data/profiles/hopper-120b.yaml" in names and "gptossctl/_data/systemd/gptoss@.service" in names


# ---- assets

def test_vocab_with_the_wrong_digest_is_refused(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    for n in ("o200k_base", "cl100k_base"):
        (vocab / f"{n}.tiktoken").write_text("aGVsbG8= 0\n")  # right format, wrong content
    recipe = write_recipe(tmp_path, assets={"tiktoken_dir": "vocab"})
    code, doc = pack(cli, recipe, tmp_path / "b", keys, "--model-dir", str(hf_model))
    assert code == 1 and doc["error"]["code"] == "pack.vocab_hash_mismatch"
    assert sorted(f["code"] for f in doc["findings"]) == ["assets.vocab_hash_mismatch"] * 2
    assert not (tmp_path / "b").exists()


def test_vocab_with_the_published_digest_is_taken(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "o200k_base.tiktoken").write_bytes(b"stand-in")
    files = fetch_vocab(["o200k_base"], tmp_path, local_dir=tmp_path,
                        expected={"o200k_base": hashlib.sha256(b"stand-in").hexdigest()})
    assert [f.dest for f in files] == ["assets/tiktoken/o200k_base.tiktoken"]
    with pytest.raises(CheckFailed):
        fetch_vocab(["o200k_base"], tmp_path, local_dir=tmp_path)  # the real published digest


def test_compile_cache_is_labelled(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cc" / "torch_compile_cache" / "abc"
    cache.mkdir(parents=True)
    (cache / "graph.py").write_text("# compiled\n")
    vocab_ok = {"tiktoken": [], "compile_caches": [{"dir": "cc", "vllm": "0.33.0", "torch": "2.14.0",
                                                     "gpu_arch": "sm_90", "profile": "hopper-120b"}]}
    code, doc = pack(cli, write_recipe(tmp_path, assets=vocab_ok), tmp_path / "b", keys, "--model-dir", str(hf_model))
    assert code == 0, doc
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (label,) = m["components"]["assets"]["compile_caches"]
    assert label["gpu_arch"] == "sm_90" and label["torch"] == "2.14.0" and label["files"] == 1
    assert any(f["path"] == f"{label['path']}/torch_compile_cache/abc/graph.py" for f in m["files"])


# ---- dry run

def test_dry_run_fetches_and_writes_nothing(cli, tmp_path: Path, hf_model: Path, keys) -> None:  # type: ignore[no-untyped-def]
    recipe = write_recipe(tmp_path, vllm={"version": "0.33.0"})
    before = set(os.listdir(tmp_path))
    code, doc = pack(cli, recipe, tmp_path / "b", keys,
                     "--model-dir", str(hf_model), "--dry-run")
    assert code == 0 and doc["data"]["dry_run"] is True
    d = doc["data"]
    assert d["known_bytes"] == sum(f["size"] for f in d["files"]) > 0
    assert any("vllm==0.33.0" in item and "manylinux_2_28_x86_64" in item for item in d["to_fetch"])
    assert d["disk_needed"] >= d["known_bytes"] and d["disk_free"] > 0
    assert set(os.listdir(tmp_path)) == before
