"""Verify a bundle directory: signatures, manifest, then every byte of every file.

Fails closed. Every problem becomes a Finding; the result is either a VerifiedBundle or a
CheckFailed listing all findings sorted. Nothing in the bundle is followed out of the tree: links,
device files and unsafe manifest paths are reported and never opened.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptossctl import __version__
from gptossctl.bundle.dsse import Envelope, parse_envelope
from gptossctl.bundle.hashing import SHARD_SIZE, HashRun, Piece, Progress, pieces_for, sha256_file
from gptossctl.bundle.keys import PublicKey
from gptossctl.bundle.layout import ENVELOPE, MANIFEST, PAYLOAD, SUMS, TOP_LEVEL, unsafe_path_reason
from gptossctl.bundle.manifest import parse_manifest, path_findings
from gptossctl.errors import CheckFailed, Finding, UsageError

if TYPE_CHECKING:
    # Not at run time: pydantic takes a third of a second to import, and verification hashes
    # while it loads (see verify_bundle).
    from gptossctl.bundle.manifest import FileEntry, Manifest


@dataclass(frozen=True)
class TrustPolicy:
    trusted: tuple[PublicKey, ...]
    threshold: int = 1
    revoked: frozenset[str] = frozenset()
    clock_skew: timedelta = timedelta(minutes=5)
    min_version: int | None = None  # refuse bundles older than this (rollback protection)
    now: datetime | None = None
    # key id -> signer name, from a trust root (else from the key file's name: alice.pub -> alice)
    names: tuple[tuple[str, str], ...] = ()
    # A trust root may insist that every signature comes from a key it knows (no vendor + site co-signing).
    require_known_signers: bool = False

    def __post_init__(self) -> None:
        if not self.trusted:
            raise UsageError(
                "no trusted keys given: a bundle cannot be verified against an empty key set",
                code="verify.no_trusted_keys",
                hint="pass the signer's public key with --trust FILE.pub",
            )
        if self.threshold < 1:
            raise UsageError("--threshold must be at least 1", code="verify.bad_threshold")
        usable = {k.keyid for k in self.trusted} - self.revoked
        if self.threshold > len(usable):
            raise UsageError(
                f"--threshold {self.threshold} needs more trusted, unrevoked keys than the {len(usable)} given",
                code="verify.bad_threshold",
            )

    def name_of(self, keyid: str) -> str | None:
        """The signer's name: the trust root's, else the trusted key file's stem; None for an unknown key."""
        named = dict(self.names).get(keyid)
        if named:
            return named
        source = next((k.source for k in self.trusted if k.keyid == keyid), "")
        return Path(source).stem if source else None

    def signed_by(self, keyids: Iterable[str]) -> list[dict[str, str | None]]:
        """Who signed, as people read it: name beside the key id."""
        return [{"name": self.name_of(k), "keyid": k} for k in keyids]


@dataclass(frozen=True)
class VerifiedBundle:
    root: Path
    manifest: Manifest = field(repr=False)
    signers: tuple[str, ...]
    bytes_hashed: int
    # The envelope as verified (payload and signatures): later steps use this copy, never the file again.
    envelope: Envelope | None = field(default=None, repr=False)
    signed_by: tuple[dict[str, str | None], ...] = ()  # name and key id of each counted signature
    notes: tuple[Finding, ...] = ()  # what was seen and did not fail (a signature by a key not in the trust)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "bundle": str(self.root),
            "name": m.name,
            "version": m.version,
            "created": m.created.isoformat(),
            "expires": m.expires.isoformat(),
            "files": len(m.files),
            "bytes": m.total_size,
            "bytes_hashed": self.bytes_hashed,
            "signers": list(self.signers),
            "signed_by": [dict(s) for s in self.signed_by],
            "notes": [n.to_dict() for n in self.notes],
        }


def read_envelope(root: Path) -> Envelope:
    path = root / ENVELOPE
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise CheckFailed(
            f"{root} has no {ENVELOPE}: not a gptossctl bundle, or an unfinished one",
            code="bundle.not_a_bundle",
            findings=[Finding("bundle.missing_file", ENVELOPE, "signature envelope is missing")],
            hint="point at the bundle directory written by 'gptossctl bundle pack'",
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckFailed(
            f"{ENVELOPE} is not a regular file",
            code="bundle.not_a_bundle",
            findings=[Finding("bundle.symlink" if stat.S_ISLNK(st.st_mode) else "bundle.special_file",
                              ENVELOPE, "the envelope must be a regular file")],
        )
    return parse_envelope(path.read_bytes())


@dataclass(frozen=True)
class SignatureReport:
    good: tuple[str, ...]  # key ids of distinct valid signatures by trusted, unrevoked keys
    findings: tuple[Finding, ...]  # each one fails verification
    notes: tuple[Finding, ...]  # reported, never failing


def signature_report(envelope: Envelope, policy: TrustPolicy) -> SignatureReport:
    """Count distinct valid signatures by trusted, unrevoked keys against the threshold.

    A signature by a key the trust does not know is a note: a vendor's signature beside the site's own
    must not block a bundle whose threshold the site's keys meet (unless the trust root sets
    require_known_signers). A trusted key whose signature does not verify, or a revoked key, fails: that is
    tampering or a key the site withdrew, never noise."""
    trusted = {k.keyid: k for k in policy.trusted}
    message = envelope.signed_message()
    good: list[str] = []
    findings: list[Finding] = []
    notes: list[Finding] = []
    for sig in envelope.signatures:
        subject = f"signature:{sig.keyid}"  # key ids whole: reports (SARIF, the compliance page) are matched on them
        name = policy.name_of(sig.keyid)
        who = f"{name} ({sig.keyid})" if name else sig.keyid
        if sig.keyid in policy.revoked:
            findings.append(Finding("signature.revoked_key", subject, f"signed by revoked key {who}",
                                    hint="re-sign the bundle with a current key"))
        elif sig.keyid not in trusted:
            unknown = Finding("signature.unknown_signer", subject, f"signed by key {sig.keyid} which this trust "
                              "does not know: not counted",
                              hint="ignored unless the trust root sets require_known_signers; add the key to the "
                                   "trust root ('gptossctl trust rotate') if it should count")
            (findings if policy.require_known_signers else notes).append(unknown)
        elif not trusted[sig.keyid].verify(sig.sig, message):
            findings.append(Finding("signature.invalid", subject, f"signature by {who} does not match the manifest "
                                    "(manifest edited or signature damaged)"))
        elif sig.keyid not in good:
            good.append(sig.keyid)
    if len(good) < policy.threshold:
        findings.append(Finding("signature.threshold_not_met", "signatures",
                                f"{len(good)} valid trusted signature(s)"
                                + (f" ({', '.join(str(policy.name_of(k)) for k in good)})" if good else "")
                                + f", {policy.threshold} required",
                                hint="have more trusted signers co-sign with 'gptossctl bundle sign'"))
    return SignatureReport(tuple(good), tuple(findings), tuple(notes))


def check_signatures(envelope: Envelope, policy: TrustPolicy) -> tuple[list[str], list[Finding]]:
    """Return the key ids of valid trusted signatures and findings for everything that fails."""
    report = signature_report(envelope, policy)
    return list(report.good), list(report.findings)


def check_dates(manifest: Manifest, *, now: datetime, skew: timedelta) -> list[Finding]:
    findings = []
    if now - skew > manifest.expires:  # not expires + skew: that overflows for an expiry in the year 9999
        findings.append(Finding("bundle.expired", "expires",
                                f"bundle expired at {manifest.expires.isoformat()}",
                                hint="pack and sign a fresh bundle, or fix this host's clock"))
    if now + skew < manifest.created:
        findings.append(Finding("bundle.not_yet_valid", "created",
                                f"bundle was created in the future ({manifest.created.isoformat()})",
                                hint="check this host's clock (and --clock-skew)"))
    return findings


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def check_versions(manifest: Manifest, *, min_version: int | None) -> list[Finding]:
    findings = []
    if min_version is not None and manifest.version < min_version:
        findings.append(Finding("bundle.downgrade", "version",
                                f"bundle version {manifest.version} is older than {min_version}",
                                hint="use the newer bundle; a downgrade needs an explicit --allow-downgrade"))
    if _version_tuple(manifest.min_gptossctl_version) > _version_tuple(__version__):
        findings.append(Finding("bundle.requires_newer_gptossctl", "min_gptossctl_version",
                                f"bundle needs gptossctl >= {manifest.min_gptossctl_version}, this is {__version__}",
                                hint="install the gptossctl wheel shipped in the bundle's wheels/"))
    return findings


@dataclass
class _Tree:
    files: dict[str, int]  # relative path -> size, regular files only
    findings: list[Finding]


def scan_tree(root: Path) -> _Tree:
    """Walk the bundle without following anything; report links and special files."""
    files: dict[str, int] = {}
    findings: list[Finding] = []
    try:
        top = list(os.scandir(root))
    except OSError as exc:
        raise UsageError(f"cannot read bundle directory {root}: {exc.strerror}", code="bundle.unreadable") from exc
    for entry in top:
        if entry.name not in TOP_LEVEL:
            findings.append(Finding("bundle.extra_file", entry.name, "not part of a bundle",
                                    hint="remove it, or obtain a clean copy of the bundle"))
    payload = root / PAYLOAD
    if payload.is_symlink() or (payload.exists() and not payload.is_dir()):
        findings.append(Finding("bundle.symlink", PAYLOAD, "payload must be a real directory"))
        return _Tree(files, findings)
    stack = [("", payload)]
    while stack:
        rel_dir, directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            rel = f"{rel_dir}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                findings.append(Finding("bundle.symlink", rel, "symbolic links are refused",
                                        hint="a bundle holds regular files only"))
            elif stat.S_ISDIR(st.st_mode):
                stack.append((rel + "/", Path(entry.path)))
            elif stat.S_ISREG(st.st_mode):
                files[rel] = st.st_size
            else:
                findings.append(Finding("bundle.special_file", rel, "device, FIFO or socket in the bundle"))
    return _Tree(files, findings)


def _preview_pieces(root: Path, payload: bytes, tree: _Tree) -> list[Piece]:
    """Pieces to start hashing before the manifest is strictly parsed or its signatures checked.

    Hashing is only reading: whatever the preview says, digests are compared later against the
    strictly parsed, signature-checked manifest, and only safe paths of regular files are opened.
    """
    try:
        doc = json.loads(payload)
        shard = doc.get("shard_size", SHARD_SIZE)
        entries = [(f["path"], f["size"]) for f in doc["files"]]
        if not isinstance(shard, int) or shard < 1 << 20:
            return []
    except Exception:  # noqa: BLE001 - any oddity: no head start, the strict parse reports it
        return []
    pieces = []
    for path, size in entries:
        if isinstance(path, str) and unsafe_path_reason(path) is None and tree.files.get(path) == size:
            pieces += pieces_for(root / PAYLOAD / path, path, size, shard)
    return pieces


@dataclass(frozen=True)
class CheckedEnvelope:
    """What steps 3-5 established about a signed manifest, before any payload byte is compared."""

    manifest: Manifest = field(repr=False)
    signers: tuple[str, ...]
    findings: tuple[Finding, ...]
    notes: tuple[Finding, ...] = ()


def check_envelope(envelope: Envelope, policy: TrustPolicy | None) -> CheckedEnvelope:
    """Steps 3-5 of verification, shared by bundles, part sets and deltas.

    (3) signatures against the trust policy (skipped only when policy is None: integrity only);
    (4) the strict parse of the signed manifest (a malformed one raises, with the signature findings);
    (5) dates, versions, path rules and a non-empty file list.
    """

    findings: list[Finding] = []
    signers: list[str] = []
    notes: tuple[Finding, ...] = ()
    if policy is not None:
        report = signature_report(envelope, policy)
        signers, notes = list(report.good), report.notes
        # Failing anyway: the uncounted signatures help explain why (never the cause on their own).
        findings += [*report.findings, *report.notes] if report.findings else []
    try:
        manifest = parse_manifest(envelope.payload)
    except CheckFailed as exc:
        raise CheckFailed("bundle verification failed", code="bundle.verify_failed",
                          findings=[*findings, *exc.findings], hint=exc.hint) from None
    findings += path_findings(manifest)
    if not manifest.files:
        findings.append(Finding("manifest.empty", "files", "the manifest lists no files"))
    now = (policy.now if policy and policy.now else None) or datetime.now(UTC)
    skew = policy.clock_skew if policy else timedelta(minutes=5)
    findings += check_dates(manifest, now=now, skew=skew)
    findings += check_versions(manifest, min_version=policy.min_version if policy else None)
    return CheckedEnvelope(manifest, tuple(signers), tuple(findings), notes)


def verify_bundle(
    root: Path,
    policy: TrustPolicy | None,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    on_total: Any = None,
) -> VerifiedBundle:
    """Verify signatures (unless policy is None, for integrity-only checks) and every file.

    The steps, in order (each one a function below):
      (0) the bundle is a directory;
      (1) read the envelope: without it there is nothing to check;
      (2) walk the tree without following anything, and start hashing what the not yet trusted
          manifest names, so the disks are busy while steps 3-7 run;
      (3-5) check_envelope: signatures, strict manifest, dates, versions, path rules;
      (6) manifest.json and SHA256SUMS are the signed payload and the signed list;
      (7) the tree holds exactly the listed files at their recorded sizes;
      (8) every byte: file and shard digests against the manifest.
    `on_total(n)` is told the number of bytes that will be hashed, for progress bars.
    """
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", code="bundle.not_found",
                         hint="give the bundle directory (the one holding manifest.dsse.json)")
    envelope = read_envelope(root)
    tree = scan_tree(root)
    run = HashRun(_preview_pieces(root, envelope.payload, tree), workers=workers,
                  progress=progress or (lambda _n: None))
    if on_total:
        on_total(run.total)
    try:
        return _verify_started(root, policy, envelope, tree, run, workers=workers)
    finally:
        run.cancel()


def _verify_started(root: Path, policy: TrustPolicy | None, envelope: Envelope, tree: _Tree, run: HashRun,
                    *, workers: int | None) -> VerifiedBundle:
    checked = check_envelope(envelope, policy)
    manifest = checked.manifest
    findings = [*checked.findings, *_manifest_copy_findings(root, envelope.payload)]
    findings += tree.findings
    unsafe = {f.subject for f in findings if f.code == "manifest.unsafe_path"}
    tree_findings, to_hash = check_tree(manifest, tree, unsafe)
    findings += tree_findings
    findings += _sums_findings(root, manifest)
    digest_findings, hashed = check_digests(root, manifest, to_hash, run, workers=workers)
    findings += digest_findings
    if findings:
        raise CheckFailed(f"bundle verification failed with {len(findings)} finding(s)",
                          code="bundle.verify_failed", findings=[*findings, *(n for n in checked.notes if n not in findings)],
                          hint="do not install this bundle; see each finding")
    return VerifiedBundle(root, manifest, checked.signers, hashed, envelope,
                          tuple(policy.signed_by(checked.signers)) if policy else (), checked.notes)


def check_tree(manifest: Manifest, tree: _Tree, unsafe: set[str]) -> tuple[list[Finding], list[FileEntry]]:
    """Step 7: extra, missing and resized files; returns the entries whose bytes are worth hashing."""
    findings: list[Finding] = []
    listed = {f.path for f in manifest.files}
    for rel in sorted(set(tree.files) - listed):
        findings.append(Finding("bundle.extra_file", f"{PAYLOAD}/{rel}", "file is not in the manifest",
                                hint="remove it, or obtain a clean copy of the bundle"))
    to_hash = []
    for entry in manifest.files:
        if entry.path in unsafe:
            continue  # never open a path that could leave the tree
        actual = tree.files.get(entry.path)
        subject = f"{PAYLOAD}/{entry.path}"
        if actual is None:
            findings.append(Finding("bundle.missing_file", subject, "listed in the manifest but absent"))
        elif actual != entry.size:
            kind = "truncated" if actual < entry.size else "longer than recorded"
            findings.append(Finding("bundle.size_mismatch", subject,
                                    f"{kind}: {actual} bytes, manifest says {entry.size}"))
        else:
            to_hash.append(entry)
    return findings, to_hash


def check_digests(root: Path, manifest: Manifest, to_hash: list[FileEntry], run: HashRun, *,
                  workers: int | None) -> tuple[list[Finding], int]:
    """Step 8: collect the digests started in step 2 (hash what the preview missed) and compare."""
    digests = run.results()
    needed = [p for e in to_hash for p in pieces_for(root / PAYLOAD / e.path, e.path, e.size, manifest.shard_size)]
    missing = [p for p in needed if p.key not in digests]  # only if the preview could not be used
    if missing:
        digests.update(HashRun(missing, workers=workers).results())
    hashed = sum(digests[p.key].read for p in needed)
    findings: list[Finding] = []
    for entry in to_hash:
        expected: Iterable[tuple[int, str]] = (
            enumerate(entry.shards) if entry.shards else [(-1, entry.sha256)]
        )
        for idx, want in expected:
            got = digests[(entry.path, idx)]
            where = "" if idx < 0 else f" (shard {idx} at offset {idx * manifest.shard_size})"
            if got.sha256 is None:
                findings.append(Finding("bundle.unreadable_file", f"{PAYLOAD}/{entry.path}",
                                        f"could not read{where}: {got.error}"))
            elif got.sha256 != want:
                findings.append(Finding("bundle.digest_mismatch", f"{PAYLOAD}/{entry.path}",
                                        f"SHA-256 differs from the manifest{where}",
                                        hint="the file was changed or damaged in transit: copy it again"))
    return findings, hashed


def _manifest_copy_findings(root: Path, payload: bytes) -> list[Finding]:
    """manifest.json is the readable copy of the signed payload; it must be byte-identical."""
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        return [Finding("bundle.missing_file", MANIFEST, "readable manifest copy is missing or not a file")]
    if path.read_bytes() != payload:
        return [Finding("manifest.edited", MANIFEST, "differs from the signed payload in manifest.dsse.json",
                        hint="someone edited the manifest: obtain a fresh copy of the bundle")]
    return []


def _sums_findings(root: Path, manifest: Manifest) -> list[Finding]:
    path = root / SUMS
    if path.is_symlink() or not path.is_file():
        return [Finding("bundle.missing_file", SUMS, "checksum list for sha256sum -c is missing")]
    if sha256_file(path) != manifest.sha256sums:
        return [Finding("bundle.sha256sums_mismatch", SUMS, "differs from the digest in the signed manifest")]
    return []
