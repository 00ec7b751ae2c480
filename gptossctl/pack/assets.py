"""Offline assets: the harmony/tiktoken vocab files (openai-harmony <= 0.0.8 downloads them at first use
and fails offline) and pre-warmed compile caches, each labelled with what it is valid for."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptossctl.adapters import downloads
from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.pack.spec import AssetsSpec

# Published digests (REFERENCE.md; harmony checks the same values when TIKTOKEN_ENCODINGS_BASE is set).
VOCAB_SHA256: Mapping[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
VOCAB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


@dataclass(frozen=True)
class AssetFile:
    src: Path
    dest: str  # relative to payload/
    component: str


def fetch_vocab(names: Sequence[str], scratch: Path, *, local_dir: Path | None,
                expected: Mapping[str, str] = VOCAB_SHA256) -> list[AssetFile]:
    """Each vocab file from a local directory or the public URL, refused unless its SHA-256 is the
    published one."""
    out = []
    findings = []
    for name in names:
        path = (local_dir / f"{name}.tiktoken") if local_dir else scratch / "tiktoken" / f"{name}.tiktoken"
        if local_dir is None and not path.exists():
            downloads.fetch(VOCAB_URL.format(name=name), path)
        if not path.is_file():
            raise UsageError(f"vocab file {path} is missing", code="pack.vocab_missing",
                             hint=f"put {name}.tiktoken in the recipe's assets.tiktoken_dir")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected[name]:
            findings.append(Finding("assets.vocab_hash_mismatch", str(path),
                                    f"SHA-256 {digest} is not the published {expected[name]}"))
        out.append(AssetFile(path, f"assets/tiktoken/{name}.tiktoken", "assets"))
    if findings:
        raise CheckFailed("a vocab file is not the published one", code="pack.vocab_hash_mismatch",
                          findings=findings, hint=f"fetch it again from {VOCAB_URL.format(name='NAME')}")
    return out


def compile_caches(spec: AssetsSpec, spec_dir: Path) -> tuple[list[AssetFile], list[dict[str, Any]]]:
    """Pre-warmed torch.compile/Triton caches: valid only for the same vLLM, torch, flags and GPU
    architecture, so each is stored under its labels and the labels go into the manifest."""
    files: list[AssetFile] = []
    labels: list[dict[str, Any]] = []
    for cache in spec.compile_caches:
        root = spec_dir / cache.dir
        if not root.is_dir():
            raise UsageError(f"compile cache {root} does not exist", code="pack.source_missing")
        prefix = f"assets/compile-cache/{cache.profile}-{cache.gpu_arch}-vllm{cache.vllm}-torch{cache.torch}"
        count = 0
        for dirpath, _dirs, names in os.walk(root):
            for n in sorted(names):
                p = Path(dirpath) / n
                files.append(AssetFile(p, f"{prefix}/{p.relative_to(root).as_posix()}", "assets"))
                count += 1
        labels.append({**cache.model_dump(exclude={"dir"}), "path": prefix, "files": count})
    return files, labels
