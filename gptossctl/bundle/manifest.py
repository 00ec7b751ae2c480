"""The bundle manifest: every payload file with its size and SHA-256, and what the bundle is.

The manifest is the one small document that is signed; the payload is trusted only through it.
Parsing is strict (unknown keys, wrong types, naive datetimes are refused); path safety is checked
separately so that every unsafe path is listed, not only the first.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptossctl.bundle.hashing import shard_count
from gptossctl.bundle.layout import path_collisions, unsafe_path_reason
from gptossctl.errors import CheckFailed, Finding
from gptossctl.fsutil import DuplicateKey, refuse_duplicate_keys

MANIFEST_SCHEMA: Literal["gptossctl.manifest/1"] = "gptossctl.manifest/1"
COMPONENTS = ("model", "wheels", "kernels", "assets", "profiles", "units", "sbom")
MAX_VERSION = 10**15  # as --version allows: a larger one would block every later upgrade and rollback --to
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _hex64(v: str) -> str:
    if not _HEX64.match(v):
        raise ValueError("must be 64 lowercase hex digits")
    return v


def _aware(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("must carry a time zone (UTC 'Z')")
    return v


Hex64 = Annotated[str, AfterValidator(_hex64)]
AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    path: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0)
    sha256: Hex64
    component: Literal["model", "wheels", "kernels", "assets", "profiles", "units", "sbom"]
    shards: tuple[Hex64, ...] | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    schema_: Literal["gptossctl.manifest/1"] = Field(alias="schema")
    name: str
    version: int = Field(ge=1, le=MAX_VERSION)
    created: AwareDatetime
    expires: AwareDatetime
    min_gptossctl_version: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    shard_size: int = Field(ge=1 << 20, le=1 << 40)
    components: dict[str, dict[str, Any]]
    sha256sums: Hex64
    files: tuple[FileEntry, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be lowercase letters, digits, '.', '_' or '-'")
        if self.expires <= self.created:
            raise ValueError("expires must be after created")
        for c in self.components:
            if c not in COMPONENTS:
                raise ValueError(f"unknown component {c!r}")
        for f in self.files:
            want = shard_count(f.size, self.shard_size)
            have = len(f.shards) if f.shards is not None else 0
            if want != have:
                raise ValueError(f"{f.path!r}: {have} shard digests, size needs {want}")
        return self

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), indent=1) + "\n").encode()


def sha256sums_text(files: tuple[FileEntry, ...] | list[FileEntry]) -> bytes:
    """The `sha256sum -c` list of the payload, paths relative to the bundle directory."""
    return "".join(f"{f.sha256}  payload/{f.path}\n" for f in files).encode()


def parse_manifest(data: bytes) -> Manifest:
    """Parse the signed payload; any problem is a CheckFailed with a manifest.malformed finding."""
    try:
        # A key given twice is ambiguous signed data (pydantic keeps the last; another reader may take the
        # first): refuse it before validating.
        json.loads(data, object_pairs_hook=refuse_duplicate_keys)
        # JSON mode of strict validation: arrays become tuples and RFC 3339 strings datetimes,
        # but nothing else is coerced ("1" is not 1, 1.0 is not 1).
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise _malformed(f"{where}: {first['msg']}") from None
    except DuplicateKey as exc:
        raise _malformed(str(exc)) from None
    except (RecursionError, ValueError) as exc:
        raise _malformed(f"unparseable ({exc.__class__.__name__})") from None


def _malformed(message: str) -> CheckFailed:
    return CheckFailed(
        f"manifest is malformed: {message}",
        code="bundle.manifest_malformed",
        findings=[Finding("manifest.malformed", "manifest.json", message)],
        hint="the bundle is damaged or was not written by gptossctl: obtain a fresh copy",
    )


def path_findings(manifest: Manifest) -> list[Finding]:
    """Unsafe and duplicate paths (also a file that is another file's directory), and paths that differ
    but name one file on another disk: equal after NFC and case folding (bundle.path_collision)."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for f in manifest.files:
        reason = unsafe_path_reason(f.path)
        if reason:
            findings.append(Finding("manifest.unsafe_path", f.path, f"path {reason}"))
        if f.path in seen:
            findings.append(Finding("manifest.duplicate_path", f.path, "listed more than once"))
        seen.add(f.path)
    for path, other in path_collisions(f.path for f in manifest.files):
        findings.append(Finding("bundle.path_collision", path,
                                f"is the same file as {other!r} on a disk that normalises Unicode (macOS) or "
                                "ignores case (FAT, exFAT, NTFS)", hint="pack again with distinct file names"))
    dirs = {"/".join(f.path.split("/")[:i]) for f in manifest.files for i in range(1, f.path.count("/") + 1)}
    for f in manifest.files:
        if f.path in dirs:
            findings.append(Finding("manifest.duplicate_path", f.path, "is both a file and a directory"))
    return findings
