"""Where the model comes from: a plain directory, a Hugging Face cache, or the Hub.

Each source resolves the recipe's revision to a commit hash (recorded in the manifest) and selects
only what vLLM reads: root shards, index, configs, tokenizer, chat template, LICENSE and
USAGE_POLICY; never `original/` or `metal/`, which would double or triple the download.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gptossctl.adapters import hf_hub
from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.pack.spec import ModelSpec


@dataclass(frozen=True)
class ModelFile:
    rel: str  # path inside the repository
    size: int | None  # None: unknown until downloaded
    src: Path | None  # None: still on the Hub


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "dir", "hf_cache" or "hub"
    repo: str
    requested_revision: str
    commit: str | None  # None for a plain directory (no revision to resolve)
    files: tuple[ModelFile, ...]

    @property
    def known_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


def select_files(names: Iterable[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Repository paths that match an include pattern and no exclude pattern."""
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)
                  and not any(fnmatch.fnmatchcase(n, p) for p in exclude))


def check_selection(selected: Sequence[str], spec: ModelSpec, where: str) -> None:
    """Every required file is there, and there are weights: else no half-bundle is ever started."""
    missing = [r for r in spec.required if r not in selected]
    findings = [Finding("pack.model_file_missing", f, f"not in {where}") for f in missing]
    if not any(n.endswith(".safetensors") for n in selected):
        findings.append(Finding("pack.model_file_missing", "*.safetensors", f"no weights selected from {where}"))
    if findings:
        raise CheckFailed(f"the model at {where} lacks files vLLM needs", code="pack.model_incomplete",
                          findings=findings, hint="check the repository, the revision and the recipe's include patterns")


def walk_model_dir(root: Path, *, boundary: Path | None = None) -> dict[str, Path]:
    """Every file under root by its path relative to root, never leaving `boundary` (default: root).

    Directory links inside the boundary are followed once; a directory reached twice is a loop (or an alias)
    and is refused, as is any link whose target lies outside the boundary: a link to a root-only file must not
    end up world-readable in a bundle.
    """
    fence = (boundary or root).resolve()
    files: dict[str, Path] = {}
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, rel = stack.pop()
        real = directory.resolve()
        st = real.stat()
        if (st.st_dev, st.st_ino) in seen:
            raise UsageError(f"{directory} is reached twice through links: a loop or an alias in the model directory",
                             code="pack.link_loop", hint="remove the directory link; pack a plain copy of the model")
        seen.add((st.st_dev, st.st_ino))
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path, name = Path(entry.path), f"{rel}{entry.name}"
            if entry.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(fence):
                    raise UsageError(f"{path} is a link to {target}, outside {fence}", code="pack.link_escapes",
                                     hint="copy the file into the model directory (as a regular file) or remove the "
                                          "link; a bundle never follows links out of its source")
                if target.is_dir():
                    stack.append((path, name + "/"))
                elif target.is_file():
                    files[name] = path
            elif entry.is_dir(follow_symlinks=False):
                stack.append((path, name + "/"))
            elif entry.is_file(follow_symlinks=False):
                files[name] = path
    return files


def _local_files(root: Path, spec: ModelSpec, *, boundary: Path | None = None) -> tuple[ModelFile, ...]:
    names = walk_model_dir(root, boundary=boundary)
    selected = select_files(names, spec.include, spec.exclude)
    check_selection(selected, spec, str(root))
    return tuple(ModelFile(rel, names[rel].stat().st_size, names[rel]) for rel in selected)


def from_directory(root: Path, spec: ModelSpec) -> ModelSource:
    if not root.is_dir():
        raise UsageError(f"model directory {root} does not exist", code="pack.source_missing",
                         hint="pass an existing directory with --model-dir")
    return ModelSource("dir", spec.repo, spec.revision, None, _local_files(root, spec))


def from_hf_cache(cache: Path, spec: ModelSpec) -> ModelSource:
    """Resolve the revision inside a Hugging Face cache (refs/<branch> -> snapshots/<commit>), offline. The
    snapshot's links point into the repository's blobs/: that folder is the fence."""
    if not cache.is_dir():
        raise UsageError(f"Hugging Face cache {cache} does not exist", code="pack.source_missing",
                         hint="give the cache directory (HF_HUB_CACHE), holding models--ORG--NAME folders")
    snapshot = hf_hub.cached_snapshot(cache, spec.repo, spec.revision)
    return ModelSource("hf_cache", spec.repo, spec.revision, snapshot.name,
                       _local_files(snapshot, spec, boundary=snapshot.parent.parent))


def from_hub(spec: ModelSpec) -> ModelSource:
    """List the repository at the revision (sizes included) without downloading anything."""
    listing = hf_hub.list_repo(spec.repo, spec.revision)
    selected = select_files(listing.sizes, spec.include, spec.exclude)
    check_selection(selected, spec, f"{spec.repo}@{listing.commit}")
    return ModelSource("hub", spec.repo, spec.revision, listing.commit,
                       tuple(ModelFile(n, listing.sizes[n], None) for n in selected))


def download(source: ModelSource, cache: Path) -> ModelSource:
    """Fetch Hub files into a scratch Hugging Face cache, at the resolved commit. A dropped download
    resumes (huggingface_hub keeps `.incomplete` files), and files already there are not fetched again."""
    if source.kind != "hub" or source.commit is None:
        return source
    files = []
    for f in source.files:
        path = hf_hub.download(source.repo, f.rel, source.commit, cache)
        files.append(ModelFile(f.rel, path.stat().st_size, path))
    return ModelSource(source.kind, source.repo, source.requested_revision, source.commit, tuple(files))
