"""The options every command group shares, as `Annotated` aliases (one definition each, one set of bounds),
and the trust policy built from `--trust/--threshold/--revoked` in one place.

Bounds live here so that nonsense is refused as usage (exit 2) before any work is done: a port outside
1024-65535, ten million hashing threads, a threshold of minus one, a URL that is not http(s).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlparse

import typer

from gptossctl.durations import parse_duration
from gptossctl.errors import UsageError

if TYPE_CHECKING:
    from gptossctl.bundle.verify import TrustPolicy

MAX_WORKERS = 256
MAX_VERSION = 10**15  # bundle versions are YYYYMMDDHHMM by default; JSON readers lose precision past 2**53
_KEYID = re.compile(r"[0-9a-f]{64}")
_INSTANCE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")


def check_url(value: str) -> str:
    try:
        parsed = urlparse(value)
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in value):
        raise typer.BadParameter(f"{value!r} is not an http(s) URL such as http://127.0.0.1:8000")
    return value


def _instance(value: str | None) -> str | None:
    if value is not None and not _INSTANCE.fullmatch(value):
        raise typer.BadParameter(f"{value!r}: lowercase letters, digits and '-', at most 48 characters")
    return value


def _root(value: Path) -> Path:
    try:
        bad = value.exists() and not value.is_dir()
    except OSError as exc:  # too long, a loop
        raise typer.BadParameter(f"{str(value)[:200]}: {exc.strerror}") from None
    if bad:
        raise typer.BadParameter(f"{value} is not a directory")
    return value


def _existing_root(value: Path) -> Path:
    try:
        is_dir = value.is_dir()
    except OSError as exc:  # too long, a loop
        raise typer.BadParameter(f"{str(value)[:200]}: {exc.strerror}") from None
    if not is_dir:
        raise typer.BadParameter(f"{value} is not a directory" if value.exists() or value.is_symlink()
                                 else f"{value} does not exist")
    return value


def _finite(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise typer.BadParameter("must be a finite number")
    return value


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON result document on stdout.")]
TrustOpt = Annotated[list[Path], typer.Option("--trust", help="Trusted public key (.pub); repeat for several.")]
ThresholdOpt = Annotated[int, typer.Option("--threshold", min=1, max=64,
                                           help="Distinct trusted signatures required (k of n).")]
OptionalThresholdOpt = Annotated[int | None, typer.Option("--threshold", min=1, max=64,
                                                          help="Distinct trusted signatures required (k of n).")]
TrustRootOpt = Annotated[Path | None, typer.Option("--trust-root", help="A signed trust root file "
                                                   "(gptossctl.trust-root/1): its release signers and threshold.")]
RevokedOpt = Annotated[list[str], typer.Option("--revoked", help="Revoked key: a 64-hex key id or a .pub file; "
                                               "repeatable.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, max=MAX_WORKERS,
                                                help="Threads (default: all cores).")]
VersionOpt = Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION,
                                                help="Bundle version (default: UTC YYYYMMDDHHMM).")]
MinVersionOpt = Annotated[int | None, typer.Option("--min-version", min=1, max=MAX_VERSION,
                                                   help="Refuse bundle versions below this.")]
PortOpt = Annotated[int, typer.Option("--port", min=1024, max=65535,
                                      help="Port the router listens on; replica k takes --port+1+k (1024-65535).")]
RootOpt = Annotated[Path, typer.Option("--root", callback=_root, help="Stage into (or look at) this tree instead of "
                                       "the host: units enabled with systemctl --root, nothing started.")]
ExistingRootOpt = Annotated[Path, typer.Option("--root", callback=_existing_root,
                                               help="Look at this tree (an image, a staged root) instead of the "
                                                    "host.")]
InstanceOpt = Annotated[str | None, typer.Option("--instance", callback=_instance,
                                                 help="Instance name (default: the model's served name).")]
UrlOpt = Annotated[str, typer.Option("--url", callback=check_url, help="Service base URL.")]
KeyFileOpt = Annotated[Path | None, typer.Option("--api-key-file", help="File with the API key (or an env file "
                                                 "with VLLM_API_KEY=).")]
ExposureOpt = Annotated[float, typer.Option("--max-exposure", min=0.0, max=10.0, callback=_finite,
                                            help="Highest systemd-analyze exposure that passes.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file (never through a link).")]


def revoked_ids(values: list[str]) -> frozenset[str]:
    """Key ids from `--revoked` values: a 64-hex key id, or a public key file that must exist (a mistyped path
    revokes nothing, so it is refused rather than taken as an id)."""
    from gptossctl.bundle.keys import load_public_key

    ids = set()
    for v in values:
        if _KEYID.fullmatch(v.lower()):
            ids.add(v.lower())
        elif Path(v).exists():
            ids.add(load_public_key(Path(v)).keyid)
        else:
            raise UsageError(f"--revoked {v!r} is neither a key id (64 hex digits) nor an existing .pub file",
                             code="verify.bad_revoked", hint="check the path, or give the key id that "
                             "'gptossctl keys show FILE' prints")
    return frozenset(ids)


def trust_policy(trust: list[Path], *, threshold: int = 1, revoked: list[str] | None = None,
                 clock_skew: str | None = None, min_version: int | None = None) -> TrustPolicy:
    """The one place a TrustPolicy is built from command-line flags."""
    from gptossctl.bundle.keys import load_public_key
    from gptossctl.bundle.verify import TrustPolicy

    skew = timedelta(seconds=parse_duration(clock_skew)) if clock_skew is not None else timedelta(minutes=5)
    return TrustPolicy(tuple(load_public_key(p) for p in trust), threshold=threshold,
                       revoked=revoked_ids(revoked or []), clock_skew=skew, min_version=min_version)


def trust_root_policy(path: Path, *, clock_skew: str | None = None, min_version: int | None = None) -> TrustPolicy:
    """The release policy of a signed trust root file (checked against its own threshold), for ad-hoc use."""
    from gptossctl.bundle.trustroot import read_root, verify_self

    skew = timedelta(seconds=parse_duration(clock_skew)) if clock_skew is not None else timedelta(minutes=5)
    return verify_self(read_root(path)).root.policy("release", clock_skew=skew, min_version=min_version)


def install_policy(trust: list[Path], threshold: int | None, revoked: list[str]) -> TrustPolicy | None:
    """An install's --trust/--threshold/--revoked, or None: the instance's trust root decides."""
    if not trust:
        if threshold is not None or revoked:
            raise UsageError("--threshold and --revoked need --trust", code="trust.threshold_without_keys",
                             hint="name the keys with --trust KEY.pub, or drop the flags to use the instance's root")
        return None
    return trust_policy(trust, threshold=threshold or 1, revoked=revoked)
