"""The install record sealed in the audit chain.

release.json, the venv listing, the API key and the rendered files of a release are written on the host, so
whoever can edit the host files compliance compares can edit these too, and everything would still agree.
At each successful install, upgrade or rollback the audit entry carries a typed seal: the SHA-256 of each of
them (of the key: its digest only) as they were when gptossctl wrote them, inside the hash chain. Compliance
reads the newest seal for the current release from the verified chain and compares; what differs was
changed outside gptossctl.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed, Finding
from gptossctl.install.environment import LISTING
from gptossctl.install.layout import Layout
from gptossctl.install.release import RELEASE_JSON, ReleaseRecord, read_release
from gptossctl.install.tls import EDGE_SEAL_SCHEMA, edge_differences, edge_digests

SEAL_SCHEMA = "gptossctl.install-seal/1"
_CHUNK = 1 << 20


def digest(path: Path) -> str | None:
    """SHA-256 of a file's content; None when it is missing, unreadable or not a regular file."""
    try:
        if not path.is_file() or path.is_symlink():
            return None
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def make_seal(layout: Layout, version: int) -> dict[str, Any] | None:
    """The seal of release `version` of the instance as it is on disk now (called right after gptossctl wrote
    it); None when the release has no readable record."""
    release = layout.release(version)
    rec = read_release(release)
    if rec is None:
        return None
    return {"schema": SEAL_SCHEMA, "instance": layout.instance, "version": version, "python": rec.python,
            "external_env": rec.external_env, "release_json": digest(release / RELEASE_JSON),
            "listing": None if rec.external_env else digest(release / LISTING),
            "api_key": digest(layout.api_key), "files": {n: digest(release / n) for n in sorted(rec.rendered)},
            **({"edge": edge_digests(layout)} if rec.edge is not None else {})}


def sealed_edge(records: Sequence[Mapping[str, Any]], instance: str, rec: ReleaseRecord) -> tuple[dict[str, str | None],
                                                                                                 str] | None:
    """What the listener's files must be, and where that was said: the newest of a `tls rotate` seal and the
    current release's install seal (its edge digests); a seal from before those: the release record's own
    digests (sealed with it). None when the release has no edge."""
    if rec.edge is None:
        return None
    for e in reversed(records):
        s = e.get("seal")
        if not isinstance(s, dict) or s.get("instance") != instance:
            continue
        if s.get("schema") == EDGE_SEAL_SCHEMA:
            return {k: v for k, v in s.items() if k.endswith("_sha256") and (v is None or isinstance(v, str))}, \
                "the seal of the last tls rotate"
        if s.get("schema") == SEAL_SCHEMA and s.get("version") == rec.version:
            if isinstance(s.get("edge"), dict):
                return {k: v for k, v in s["edge"].items() if isinstance(v, str) or v is None}, \
                    f"the seal of release {rec.version}"
            break
    e = rec.edge
    return ({"cert_sha256": e.cert_sha256, "key_sha256": e.key_sha256, "client_ca_sha256": e.client_ca_sha256 or None},
            f"release {rec.version}'s record")


def require_edge_as_sealed(layout: Layout, rec: ReleaseRecord, records: Sequence[Mapping[str, Any]]) -> None:
    """An upgrade that keeps the listener re-seals its files: they must first be what the chain sealed (exit 1)."""
    expected = sealed_edge(records, layout.instance, rec)
    if expected is None:
        return
    bad = edge_differences(layout, expected[0], what=expected[1])
    if bad:
        raise CheckFailed("the listener's TLS files differ from what the audit chain sealed: the upgrade would seal "
                          "them as they are", code="install.edge_changed", findings=bad,
                          hint="install the files you mean with 'gptossctl tls rotate' (audited), or put back the "
                               "sealed ones, then upgrade again; nothing was changed")


def newest_seal(records: Sequence[Mapping[str, Any]], instance: str, version: int) -> dict[str, Any] | None:
    """The newest seal of that release in the chain's entries, or None (installed by an older gptossctl)."""
    for e in reversed(records):
        s = e.get("seal")
        if isinstance(s, dict) and s.get("schema") == SEAL_SCHEMA and s.get("instance") == instance \
                and s.get("version") == version:
            return s
    return None


def _seals(records: Sequence[Mapping[str, Any]], instance: str,
           commands: tuple[str, ...]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(entry, seal) of each well-formed seal of the instance attached to an entry of those commands, oldest first."""
    out: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    for e in records:
        s, cmd = e.get("seal"), e.get("command")
        if isinstance(s, dict) and s.get("schema") == SEAL_SCHEMA and s.get("instance") == instance \
                and type(s.get("version")) is int and isinstance(cmd, list) and cmd and cmd[0] in commands:
            out.append((e, s))
    return out


def high_water(records: Sequence[Mapping[str, Any]], instance: str) -> int | None:
    """The version high-water mark: the highest release an install or upgrade ever sealed for the instance
    (rollbacks are left out: explicit and audited); None when nothing was sealed."""
    return max((int(s["version"]) for _e, s in _seals(records, instance, ("install",))), default=None)


def last_sealed(records: Sequence[Mapping[str, Any]], instance: str) -> int | None:
    """The release the newest install or rollback sealed for the instance: what `current` must point at."""
    seals = _seals(records, instance, ("install", "rollback"))
    return int(seals[-1][1]["version"]) if seals else None


def _named(seal: Mapping[str, Any], key: str) -> str | None:
    v = seal.get(key)
    return v if isinstance(v, str) else None


def differences(layout: Layout, version: int, seal: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """(path, what differs) for every sealed file whose content is not what was sealed; empty when all match."""
    release = layout.release(version)
    out: list[tuple[Path, str]] = []

    def compare(path: Path, want: str | None, what: str) -> None:
        got = digest(path)
        if got != want:
            out.append((path, f"{what}: sha256 {got or 'missing'}, sealed at install {want or 'none'}"))

    compare(release / RELEASE_JSON, _named(seal, "release_json"), "the release record")
    rec = read_release(release)
    if rec is not None and rec.python != seal.get("python"):
        out.append((release / RELEASE_JSON, f"names the interpreter {rec.python}, sealed {seal.get('python')}"))
    if rec is not None and rec.external_env != seal.get("external_env"):
        out.append((release / RELEASE_JSON, f"external environment {rec.external_env}, sealed "
                                            f"{seal.get('external_env')}"))
    if seal.get("listing") is not None or not seal.get("external_env"):
        compare(release / LISTING, _named(seal, "listing"), "the environment's listing")
    compare(layout.api_key, _named(seal, "api_key"), "the API key (digest only)")
    files = seal.get("files")
    if not isinstance(files, dict):
        out.append((release, "the seal lists no rendered files: it is malformed"))
        return out
    for name, want in sorted(files.items()):
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            out.append((release, f"the seal names {name!r}, not a file of the release: it is malformed"))
            continue
        compare(release / name, want if isinstance(want, str) else None, "rendered file")
    if rec is not None:
        out += [(release / n, "rendered file not in the seal") for n in sorted(set(rec.rendered) - set(files))]
    return out


def require_as_sealed(layout: Layout, version: int, records: Sequence[Mapping[str, Any]], *, code: str,
                      hint: str) -> None:
    """A release about to be reused or served again is as its newest seal says (when it has one): exit 1 naming
    each file that differs; nothing changed."""
    if read_release(layout.release(version)) is None:
        return
    seal = newest_seal(records, layout.instance, version)
    if seal is None:
        return
    diffs = differences(layout, version, seal)
    if diffs:
        raise CheckFailed(f"release {version} was changed on disk since it was sealed in the audit chain",
                          code=code, hint=hint,
                          findings=[Finding("record.sealed", str(layout.live_path(p)), m) for p, m in diffs])
