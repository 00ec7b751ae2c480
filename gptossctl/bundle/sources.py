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

from gptossctl.bundle.spec import ModelSpec
from gptossctl.errors import CheckFailed, Finding, ServiceUnavailable, UsageError


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


def _local_files(root: Path, spec: ModelSpec) -> tuple[ModelFile, ...]:
    names = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for n in filenames:
            p = Path(dirpath) / n
            names[p.relative_to(root).as_posix()] = p
    selected = select_files(names, spec.include, spec.exclude)
    check_selection(selected, spec, str(root))
    return tuple(ModelFile(rel, names[rel].stat().st_size, names[rel]) for rel in selected)


def from_directory(root: Path, spec: ModelSpec) -> ModelSource:
    if not root.is_dir():
        raise UsageError(f"model directory {root} does not exist", code="pack.source_missing",
                         hint="pass an existing directory with --model-dir")
    return ModelSource("dir", spec.repo, spec.revision, None, _local_files(root, spec))


def from_hf_cache(cache: Path, spec: ModelSpec) -> ModelSource:
    """Resolve the revision inside a Hugging Face cache (refs/<branch> -> snapshots/<commit>), offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not cache.is_dir():
        raise UsageError(f"Hugging Face cache {cache} does not exist", code="pack.source_missing")
    try:
        snapshot = Path(snapshot_download(spec.repo, revision=spec.revision, cache_dir=cache,
                                          local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        raise CheckFailed(f"{spec.repo}@{spec.revision} is not in the cache {cache}", code="pack.revision_not_found",
                          hint="download it on the connected side first (hf download REPO --revision REV), "
                               f"or fix the revision ({exc.__class__.__name__})") from None
    return ModelSource("hf_cache", spec.repo, spec.revision, snapshot.name, _local_files(snapshot, spec))


def from_hub(spec: ModelSpec) -> ModelSource:
    """List the repository at the revision (sizes included) without downloading anything."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(spec.repo, revision=spec.revision, files_metadata=True)
    except RevisionNotFoundError:
        raise CheckFailed(f"revision {spec.revision!r} does not exist in {spec.repo}", code="pack.revision_not_found",
                          hint="use a branch, tag or full commit hash that exists on the Hub") from None
    except RepositoryNotFoundError:
        raise CheckFailed(f"repository {spec.repo!r} not found (or it is gated and no token is set)",
                          code="pack.repo_not_found", hint="check the name; for gated repos set HF_TOKEN") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ServiceUnavailable(f"cannot reach the Hugging Face Hub: {exc}", code="pack.hub_unreachable",
                                 hint="check the connection, or pack from a local directory or HF cache") from None
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    selected = select_files(sizes, spec.include, spec.exclude)
    check_selection(selected, spec, f"{spec.repo}@{info.sha}")
    return ModelSource("hub", spec.repo, spec.revision, info.sha,
                       tuple(ModelFile(n, sizes[n], None) for n in selected))


def download(source: ModelSource, cache: Path) -> ModelSource:
    """Fetch Hub files into a scratch Hugging Face cache, at the resolved commit. A dropped download
    resumes (huggingface_hub keeps `.incomplete` files), and files already there are not fetched again."""
    if source.kind != "hub":
        return source
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    files = []
    for f in source.files:
        try:
            path = Path(hf_hub_download(source.repo, f.rel, revision=source.commit, cache_dir=cache))
        except (HfHubHTTPError, OSError) as exc:
            raise ServiceUnavailable(f"download of {f.rel} failed: {exc}", code="pack.download_failed",
                                     hint="run the same pack again: finished files are kept and it resumes") from None
        files.append(ModelFile(f.rel, path.stat().st_size, path))
    return ModelSource(source.kind, source.repo, source.requested_revision, source.commit, tuple(files))
