"""The Hugging Face Hub and its on-disk cache, through huggingface_hub: the only code that talks to them.

Returns our own values (paths, sizes, commit hashes). Every failure becomes a gptossctl error: a revision or
repository that does not exist is a check that failed (1), Hub offline mode or a bad name is usage (2), and a
Hub that cannot be reached is an external failure (4) that names the host and the ways around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from gptossctl.errors import CheckFailed, ServiceUnavailable, UsageError

AROUND = ("pack from a local copy instead: --model-dir DIR (a directory holding the model's files), or "
          "model.source.hf_cache in the recipe (a Hugging Face cache filled on a connected machine with "
          "`hf download REPO --revision REV`); with a cache, HF_HUB_OFFLINE=1 keeps everything local")


@dataclass(frozen=True)
class RepoListing:
    commit: str
    sizes: dict[str, int | None]  # repository path -> size in bytes


def endpoint_host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).netloc or constants.ENDPOINT


def _failure(exc: BaseException, what: str) -> Exception:
    """Map huggingface_hub's and httpx's errors onto ours."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return UsageError(f"{what}: HF_HUB_OFFLINE is set, so the Hub is not asked", code="pack.hub_offline",
                          hint=f"unset HF_HUB_OFFLINE to download on a connected machine, or {AROUND}")
    if isinstance(exc, RevisionNotFoundError):
        return CheckFailed(f"{what}: the revision does not exist", code="pack.revision_not_found",
                           hint="use a branch, tag or full commit hash that exists on the Hub")
    if isinstance(exc, GatedRepoError):
        return CheckFailed(f"{what}: the repository is gated", code="pack.repo_gated",
                           hint="accept its terms on the Hub and set HF_TOKEN, or " + AROUND)
    if isinstance(exc, RepositoryNotFoundError):
        return CheckFailed(f"{what}: repository not found (or gated without a token)", code="pack.repo_not_found",
                           hint="check the repository name; for gated repositories set HF_TOKEN")
    if isinstance(exc, HFValidationError):
        return UsageError(f"{what}: {exc}", code="pack.bad_repo", hint="fix model.repo / model.revision in the recipe")
    host = endpoint_host()
    return ServiceUnavailable(f"{what}: cannot reach the Hugging Face Hub at {host} ({type(exc).__name__}: "
                              f"{str(exc)[:160]})", code="pack.hub_unreachable",
                              hint=f"check the connection to {host} (proxy: HTTPS_PROXY; mirror: HF_ENDPOINT), or {AROUND}")


def _hub_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub re-exports the HTTP client's base error (httpx in 1.x, httpx2 in 2.x) as errors.HTTPError.
    from huggingface_hub import errors

    client = getattr(errors, "HTTPError", OSError)
    return (errors.HfHubHTTPError, errors.OfflineModeIsEnabled, errors.HFValidationError, client, OSError)


def list_repo(repo: str, revision: str) -> RepoListing:
    """Every file of the repository at the revision, with sizes, resolved to a commit; nothing downloaded."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except _hub_errors() as exc:
        raise _failure(exc, f"{repo}@{revision}") from None
    return RepoListing(str(info.sha), {s.rfilename: s.size for s in info.siblings or []})


def cached_snapshot(cache: Path, repo: str, revision: str) -> Path:
    """The snapshot directory of repo@revision inside a Hugging Face cache, offline (refs/<branch> resolved)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        raise CheckFailed(f"{repo}@{revision} is not in the cache {cache}", code="pack.revision_not_found",
                          hint="download it on the connected side first (hf download REPO --revision REV), "
                               f"or fix the revision ({exc.__class__.__name__})") from None
    except _hub_errors() as exc:
        raise _failure(exc, f"{repo}@{revision} in {cache}") from None


def download(repo: str, filename: str, commit: str, cache: Path) -> Path:
    """One file into a scratch cache at the resolved commit; a dropped download resumes on the next run."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=commit, cache_dir=cache))
    except _hub_errors() as exc:
        err = _failure(exc, f"download of {filename}")
        if isinstance(err, ServiceUnavailable):
            err.hint = "run the same pack again once the Hub is reachable: finished files are kept and it resumes"
        raise err from None
