"""The trust root: one small signed document saying who may sign what for an instance.

In the spirit of TUF's root metadata, kept to what gptossctl needs:
  - `signers`: name -> key id, algorithm and public key (PEM SubjectPublicKeyInfo), and the roles it holds;
  - `roles`: `release` (bundles) and `advisory` (advisory snapshots), each a set of key ids and a threshold;
  - `version` (1, 2, ...), `expires`, and `policy.require_known_signers`.
It travels as canonical JSON inside the project's DSSE envelope, under its own payload type, signed by
signer keys. The flow:
  (1) `new_root` builds version 1 (or N) from public keys; `sign_root` adds one signature;
  (2) `verify_self` checks a root against its own release threshold (a first root);
  (3) `verify_rotation` lets a new root replace the current one only when the CURRENT root's release
      threshold AND the new root's own release threshold sign it, and its version is exactly current + 1;
  (4) `TrustRoot.policy` turns a role into the TrustPolicy that bundle verification counts against.
Parsing is strict: duplicate keys, unknown fields, wrong types, oversize documents and thresholds no key
set can meet are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptossctl.bundle.dsse import Envelope, Signature, parse_envelope
from gptossctl.bundle.keys import PublicKey, SigningKey, keyid_of
from gptossctl.bundle.verify import TrustPolicy
from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.fsutil import parse_json, read_bytes

SCHEMA = "gptossctl.trust-root/1"
PAYLOAD_TYPE = "application/vnd.gptossctl.trust-root+json"
MAX_ROOT_BYTES = 256 << 10  # a root of 64 signers is a few tens of KiB
MAX_SIGNERS = 64
ROLES = ("release", "advisory")
ROTATION_ROLE = "release"  # the role whose threshold authorises a new root (old and new)
ALGORITHMS = ("ed25519",)  # "ecdsa-p256", "ecdsa-p384" (and PKCS#11-held keys) are room left, not yet taken
RESERVED_ALGORITHMS = ("ecdsa-p256", "ecdsa-p384")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEYID = re.compile(r"[0-9a-f]{64}")
_HINT = "give a root written by 'gptossctl trust new' and signed with 'gptossctl trust sign'"


def _bad(message: str, subject: str = "trust-root") -> CheckFailed:
    return CheckFailed(f"trust root is malformed: {message}", code="trust.root_malformed",
                       findings=[Finding("trust.root_malformed", subject, message)], hint=_HINT)


@dataclass(frozen=True)
class Signer:
    name: str
    keyid: str
    algorithm: str
    public_pem: str = field(repr=False)

    def public_key(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(self.public_pem.encode())
        except (ValueError, TypeError):
            raise _bad(f"signer {self.name!r}: public_key is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise _bad(f"signer {self.name!r}: algorithm ed25519 but the key is not an Ed25519 key")
        if keyid_of(key) != self.keyid:
            raise _bad(f"signer {self.name!r}: keyid is not the SHA-256 of its public key")
        return PublicKey(self.keyid, key, f"{self.name}.pub")


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": list(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True)
class TrustRoot:
    version: int
    expires: datetime
    signers: tuple[Signer, ...]
    roles: dict[str, Role] = field(hash=False)
    require_known_signers: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": self.version,
            "expires": self.expires.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "signers": {s.name: {"keyid": s.keyid, "algorithm": s.algorithm, "public_key": s.public_pem,
                                 "roles": [r for r in ROLES if s.keyid in self.roles[r].keyids]}
                        for s in self.signers},
            "roles": {r: self.roles[r].to_dict() for r in ROLES},
            "policy": {"require_known_signers": self.require_known_signers},
        }

    def canonical(self) -> bytes:
        """The signed bytes: sorted keys, no whitespace, UTF-8 (the same document always signs the same)."""
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def name_of(self, keyid: str) -> str | None:
        return next((s.name for s in self.signers if s.keyid == keyid), None)

    def names(self, keyids: Iterable[str]) -> list[str]:
        return [self.name_of(k) or k[:16] for k in keyids]

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires

    def keys(self, role: str) -> tuple[PublicKey, ...]:
        by_id = {s.keyid: s for s in self.signers}
        return tuple(by_id[k].public_key() for k in self.roles[role].keyids)

    def policy(self, role: str = "release", **kw: Any) -> TrustPolicy:
        """The TrustPolicy a bundle (role release) is counted against: the role's keys and threshold, names."""
        return TrustPolicy(self.keys(role), threshold=self.roles[role].threshold,
                           names=tuple((s.keyid, s.name) for s in self.signers),
                           require_known_signers=self.require_known_signers, **kw)

    def summary(self) -> dict[str, Any]:
        """What `trust show` and audit entries say: names beside key ids, thresholds, expiry, digest."""
        return {"version": self.version, "expires": self.to_doc()["expires"], "digest": self.digest,
                "require_known_signers": self.require_known_signers,
                "signers": [{"name": s.name, "keyid": s.keyid, "algorithm": s.algorithm,
                             "roles": [r for r in ROLES if s.keyid in self.roles[r].keyids]} for s in self.signers],
                "roles": {r: {"signers": self.names(self.roles[r].keyids), "threshold": self.roles[r].threshold}
                          for r in ROLES}}

    def same_release_trust(self, keyids: Iterable[str], threshold: int) -> bool:
        return set(keyids) == set(self.roles["release"].keyids) and threshold == self.roles["release"].threshold


@dataclass(frozen=True)
class SignedRoot:
    root: TrustRoot
    envelope: Envelope = field(repr=False)

    def to_json(self) -> bytes:
        return self.envelope.to_json()

    def signer_keyids(self) -> list[str]:
        return [s.keyid for s in self.envelope.signatures]


# ---------------------------------------------------------------- parsing


def _str(doc: dict[str, Any], key: str, where: str, limit: int = 4096) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise _bad(f"{where}.{key} must be a non-empty string of at most {limit} characters")
    return v


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(f"{where} must be a whole number from {lo} to {hi}")
    return v


def _keys_exactly(doc: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != keys:
        raise _bad(f"{where} must be an object with exactly the keys {', '.join(sorted(keys))}")
    return doc


def parse_root(payload: bytes) -> TrustRoot:
    """The root document, strictly: every field present, typed and bounded; nothing else."""
    if len(payload) > MAX_ROOT_BYTES:
        raise _bad(f"{len(payload)} bytes is larger than any trust root ({MAX_ROOT_BYTES})")
    try:
        raw = parse_json(payload, where="(payload)", what="trust root", code="trust.root_malformed")
    except UsageError as exc:
        raise _bad(exc.message) from None
    doc = _keys_exactly(raw, {"schema", "version", "expires", "signers", "roles", "policy"}, "the root")
    if doc["schema"] != SCHEMA:
        raise _bad(f"schema {str(doc['schema'])[:80]!r} is not {SCHEMA}")
    version = _int(doc["version"], "version", 1, 2**53)
    try:
        expires = datetime.fromisoformat(_str(doc, "expires", "root", 64).replace("Z", "+00:00"))
    except ValueError:
        raise _bad("expires is not an ISO 8601 date and time") from None
    if expires.tzinfo is None:
        raise _bad("expires must carry a time zone (Z)")
    signers_doc = doc["signers"]
    if not isinstance(signers_doc, dict) or not 1 <= len(signers_doc) <= MAX_SIGNERS:
        raise _bad(f"signers must be an object of 1 to {MAX_SIGNERS} named signers")
    signers: list[Signer] = []
    declared: dict[str, set[str]] = {}
    for name, s in signers_doc.items():
        if not _NAME.fullmatch(name):
            raise _bad(f"signer name {name[:64]!r} is not a plain name (letters, digits, '.', '-', '_')")
        s = _keys_exactly(s, {"keyid", "algorithm", "public_key", "roles"}, f"signers.{name}")
        keyid, algorithm = _str(s, "keyid", f"signers.{name}", 64), _str(s, "algorithm", f"signers.{name}", 32)
        if not _KEYID.fullmatch(keyid):
            raise _bad(f"signers.{name}.keyid must be 64 lowercase hex digits")
        if algorithm in RESERVED_ALGORITHMS:
            raise _bad(f"signers.{name}: algorithm {algorithm} is not supported by this gptossctl yet")
        if algorithm not in ALGORITHMS:
            raise _bad(f"signers.{name}: algorithm {algorithm[:32]!r} is not one of {', '.join(ALGORITHMS)}")
        roles = s["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) and r in ROLES for r in roles) \
                or len(set(roles)) != len(roles):
            raise _bad(f"signers.{name}.roles must list distinct roles among {', '.join(ROLES)}")
        signer = Signer(name, keyid, algorithm, _str(s, "public_key", f"signers.{name}"))
        signer.public_key()  # the PEM must be the key the key id names
        if any(x.keyid == keyid for x in signers):
            raise _bad(f"signers.{name}: key {keyid[:16]} is already another signer's")
        signers.append(signer)
        declared[keyid] = set(roles)
    roles_doc = _keys_exactly(doc["roles"], set(ROLES), "roles")
    parsed_roles: dict[str, Role] = {}
    known = {s.keyid for s in signers}
    for r in ROLES:
        rd = _keys_exactly(roles_doc[r], {"keyids", "threshold"}, f"roles.{r}")
        ids = rd["keyids"]
        if not isinstance(ids, list) or not all(isinstance(k, str) for k in ids) or len(set(ids)) != len(ids):
            raise _bad(f"roles.{r}.keyids must be a list of distinct key ids")
        if set(ids) - known:
            raise _bad(f"roles.{r} names key ids no signer holds")
        if any(r not in declared[k] for k in ids) or any(r in declared[k] for k in known - set(ids)):
            raise _bad(f"roles.{r}.keyids disagrees with the signers' own roles")
        threshold = _int(rd["threshold"], f"roles.{r}.threshold", 0 if r == "advisory" and not ids else 1,
                         max(len(ids), 1))
        if r == "release" and not ids:
            raise _bad("roles.release must name at least one key")
        if threshold > len(ids):
            raise _bad(f"roles.{r}.threshold {threshold} is more than its {len(ids)} key(s)")
        parsed_roles[r] = Role(tuple(ids), threshold)
    pol = _keys_exactly(doc["policy"], {"require_known_signers"}, "policy")
    if not isinstance(pol["require_known_signers"], bool):
        raise _bad("policy.require_known_signers must be true or false")
    root = TrustRoot(version, expires, tuple(signers), parsed_roles, pol["require_known_signers"])
    if root.canonical() != payload:
        # Only the canonical form is signed and compared by digest: a re-indented copy is another document.
        raise _bad("the payload is not in canonical form (sorted keys, no whitespace)")
    return root


def parse_signed_root(data: bytes, *, where: str = "trust root") -> SignedRoot:
    try:
        envelope = parse_envelope(data, payload_type=PAYLOAD_TYPE, max_bytes=MAX_ROOT_BYTES * 2)
    except CheckFailed as exc:
        raise CheckFailed(f"{where} is not a signed trust root: {exc.message}", code="trust.root_malformed",
                          findings=exc.findings, hint=_HINT) from None
    return SignedRoot(parse_root(envelope.payload), envelope)


def read_root(path: Path) -> SignedRoot:
    data = read_bytes(path, what="trust root", code="trust.root_unreadable", limit=MAX_ROOT_BYTES * 2)
    return parse_signed_root(data, where=str(path))


# ---------------------------------------------------------------- making and signing


def signer_name(path: Path) -> str:
    """A signer's name from its key file: alice.pub -> alice."""
    name = path.name.removesuffix(".pub")
    if not _NAME.fullmatch(name):
        raise UsageError(f"cannot take a signer name from {path.name!r}", code="trust.bad_signer_name",
                         hint="name the key file NAME.pub (letters, digits, '.', '-', '_'), or give NAME=KEY.pub")
    return name


def _pem(key: PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def new_root(release: list[tuple[str, PublicKey]], threshold: int, *, expires: datetime, version: int = 1,
             advisory: list[tuple[str, PublicKey]] = (), advisory_threshold: int | None = None,  # type: ignore[assignment]
             require_known_signers: bool = False) -> TrustRoot:
    """A root document from named public keys (unsigned: `sign_root` adds signatures)."""
    signers: dict[str, Signer] = {}
    for name, key in [*release, *advisory]:
        if name in signers and signers[name].keyid != key.keyid:
            raise UsageError(f"signer name {name!r} is given for two different keys", code="trust.duplicate_signer",
                             hint="give each key its own name")
        if any(s.keyid == key.keyid and s.name != name for s in signers.values()):
            raise UsageError(f"key {key.keyid[:16]} is given under two names", code="trust.duplicate_signer",
                             hint="give each key once, under one name")
        signers[name] = Signer(name, key.keyid, "ed25519", _pem(key))
    rel = tuple(dict.fromkeys(k.keyid for _, k in release))
    adv = tuple(dict.fromkeys(k.keyid for _, k in advisory))
    adv_threshold = advisory_threshold if advisory_threshold is not None else (1 if adv else 0)
    if not 1 <= threshold <= len(rel):
        raise UsageError(f"--threshold {threshold} needs 1 to {len(rel)} release signer(s)", code="trust.bad_threshold",
                         hint="give as many --signer keys as the threshold, or lower it")
    if not (0 if not adv else 1) <= adv_threshold <= len(adv):
        raise UsageError(f"--advisory-threshold {adv_threshold} needs 1 to {len(adv)} advisory signer(s)",
                         code="trust.bad_threshold", hint="give --advisory-signer keys, or lower the threshold")
    root = TrustRoot(version, expires.astimezone(UTC).replace(microsecond=0), tuple(signers.values()),
                     {"release": Role(rel, threshold), "advisory": Role(adv, adv_threshold)}, require_known_signers)
    return parse_root(root.canonical())  # what we write is what we would accept


def unsigned(root: TrustRoot) -> SignedRoot:
    return SignedRoot(root, Envelope(root.canonical(), PAYLOAD_TYPE, ()))


def sign_root(signed: SignedRoot, key: SigningKey) -> SignedRoot:
    if key.keyid in signed.signer_keyids():
        raise UsageError(f"the root is already signed by {key.keyid[:16]}", code="trust.already_signed",
                         hint="have another signer sign it")
    sig = Signature(key.keyid, key.sign(signed.envelope.signed_message()))
    return SignedRoot(signed.root, signed.envelope.with_signature(sig))


# ---------------------------------------------------------------- verifying


def count_signatures(signed: SignedRoot, by: TrustRoot, role: str = ROTATION_ROLE) -> tuple[list[str], list[Finding]]:
    """Distinct valid signatures over the root by `by`'s role keys (unknown keys ignored, bad ones fail)."""
    keys = {k.keyid: k for k in by.keys(role)}
    message = signed.envelope.signed_message()
    good: list[str] = []
    bad: list[Finding] = []
    for sig in signed.envelope.signatures:
        k = keys.get(sig.keyid)
        if k is None:
            continue
        if k.verify(sig.sig, message):
            if sig.keyid not in good:  # distinct keys count, never repeated signatures
                good.append(sig.keyid)
        else:
            bad.append(Finding("trust.signature_invalid", f"signature:{sig.keyid[:16]}",
                               f"signature by {by.name_of(sig.keyid)} does not verify over this root"))
    return good, bad


def _threshold(signed: SignedRoot, by: TrustRoot, which: str) -> list[Finding]:
    good, bad = count_signatures(signed, by)
    need = by.roles[ROTATION_ROLE].threshold
    if len(good) < need:
        have = ", ".join(by.names(good)) or "none"
        bad.append(Finding("trust.threshold_not_met", which,
                           f"{len(good)} of {need} required signature(s) by the {which} root's release signers "
                           f"(signed by: {have})",
                           hint="have more of those signers run 'gptossctl trust sign ROOT.json --key KEY'"))
    return bad


def verify_self(signed: SignedRoot) -> SignedRoot:
    """A first root: signed by its own release threshold."""
    findings = _threshold(signed, signed.root, "new")
    if findings:
        raise CheckFailed("the trust root is not signed by its own release threshold", code="trust.root_unsigned",
                          findings=findings, hint="sign it with 'gptossctl trust sign ROOT.json --key KEY' until "
                          "its release threshold is met")
    return signed


def verify_rotation(current: TrustRoot, new: SignedRoot) -> SignedRoot:
    """A rotation: version exactly current+1, signed by the current root's release threshold AND the new root's."""
    findings: list[Finding] = []
    if new.root.version != current.version + 1:
        findings.append(Finding("trust.version_not_next", "version",
                                f"the new root is version {new.root.version}; only {current.version + 1} may follow "
                                f"the current version {current.version} (no rollback, no skip)",
                                hint=f"make the new root with --version {current.version + 1}"))
    findings += _threshold(new, current, "current")
    findings += _threshold(new, new.root, "new")
    if findings:
        raise CheckFailed(f"the new trust root may not replace version {current.version}", code="trust.rotation_refused",
                          findings=findings, hint="a rotation needs the current root's release threshold and the new "
                          "root's own, on a root whose version is the next one")
    return new


def expires_in(seconds: int, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) + timedelta(seconds=seconds)


# ---------------------------------------------------------------- the connected side's files


@dataclass(frozen=True)
class RootFile:
    path: Path
    signed: SignedRoot

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.signed.root.summary(),
                "signed_by": self.signed.root.names(self.signed.signer_keyids())}


def write_new_root(out: Path, release: list[tuple[str, Path]], threshold: int, *, lifetime_s: int,
                   version: int = 1, advisory: list[tuple[str, Path]] = (),  # type: ignore[assignment]
                   advisory_threshold: int | None = None, require_known_signers: bool = False,
                   force: bool = False) -> RootFile:
    """`trust new`: an unsigned root document (an envelope without signatures) from named public key files."""
    from gptossctl.bundle.keys import load_public_key
    from gptossctl.fsutil import atomic_write, new_output

    new_output(out, force=force, what="trust root")
    root = new_root([(n, load_public_key(p)) for n, p in release], threshold, expires=expires_in(lifetime_s),
                    version=version, advisory=[(n, load_public_key(p)) for n, p in advisory],
                    advisory_threshold=advisory_threshold, require_known_signers=require_known_signers)
    signed = unsigned(root)
    atomic_write(out, signed.to_json(), 0o644)
    return RootFile(out, signed)


def sign_root_file(path: Path, key: SigningKey) -> RootFile:
    """`trust sign`: one more signature on a root file, written back in place (atomically)."""
    from gptossctl.fsutil import atomic_write

    signed = sign_root(read_root(path), key)
    atomic_write(path, signed.to_json(), 0o644, replace_link=False)
    return RootFile(path, signed)
