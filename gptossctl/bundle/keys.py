"""Ed25519 signing keys: generation, loading, key ids.

Private keys are PKCS#8 PEM encrypted with a passphrase and written 0600; the passphrase comes from
GPTOSSCTL_KEY_PASSPHRASE or a prompt, never from argv (argv is world-readable in /proc).
"""

from __future__ import annotations

import errno
import getpass
import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.errors import EnvironmentNotReady, UsageError
from gptossctl.fsutil import discard, fsync_dir, read_bytes, write_error

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PASSPHRASE_ENV = "GPTOSSCTL_KEY_PASSPHRASE"
KEY_FILE_LIMIT = 64 << 10  # a PEM key is a few hundred bytes
MAX_PASSPHRASE = 1023  # cryptography refuses longer ones (ValueError)
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PassphraseSource = Callable[[str], bytes | None]

# Degenerate Ed25519 public keys. A point of small order (the identity, or any point whose order divides 8)
# verifies a signature with R = that point and S = 0 over EVERY message: whoever registers one as "the second
# signer" forges that signer at will. The eight points of order dividing 8 have five y coordinates; their
# encodings, with either sign bit (x = 0 with the sign bit set is not canonical, and some decoders take it):
SMALL_ORDER_ENCODINGS = tuple(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",  # y = 0: order 4
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000000",  # y = 1: the identity, order 1
    "0100000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p - 1: order 2
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
))
_FIELD_P = 2**255 - 19


def weak_key_reason(raw: bytes) -> str | None:
    """Why a raw 32-byte Ed25519 public key must not be trusted, or None: a point of small order, or an
    encoding that is not canonical (y >= 2^255 - 19: a second encoding of a point, so a second key id)."""
    if len(raw) != 32:
        return f"{len(raw)} bytes, not the 32 of an Ed25519 public key"
    if raw in SMALL_ORDER_ENCODINGS:
        return "a point of small order: a signature under it verifies for every message"
    if int.from_bytes(raw, "little") & ((1 << 255) - 1) >= _FIELD_P:
        return "not canonically encoded (y is not below 2^255 - 19)"
    return None


@dataclass(frozen=True)
class PublicKey:
    keyid: str
    key: Ed25519PublicKey = field(repr=False)
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "file": self.source}

    def verify(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if weak_key_reason(raw) is not None:  # however this key got here, its signatures never count
            return False
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    keyid: str
    key: Ed25519PrivateKey = field(repr=False)
    source: str = ""

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


def keyid_of(public: Ed25519PublicKey) -> str:
    """The key id: SHA-256 of the raw 32-byte public key, in hex."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class GeneratedKey:
    keyid: str
    private_path: Path
    public_path: Path
    encrypted: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "keyid": self.keyid,
            "private_key": str(self.private_path),
            "public_key": str(self.public_path),
            "encrypted": self.encrypted,
        }


def generate_key(out_dir: Path, name: str, *, passphrase: bytes | None) -> GeneratedKey:
    """Write NAME.key (0600, encrypted unless passphrase is None) and NAME.pub; never overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not _KEY_NAME.fullmatch(name):
        raise UsageError(f"key name {name!r} is not a plain file name", code="key.bad_name",
                         hint="use letters, digits, '.', '-' and '_' (at most 64), starting with a letter or digit")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a directory", code="key.bad_out",
                         hint="give a directory for NAME.key and NAME.pub (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out_dir}: {exc.strerror}", code="key.bad_out",
                         hint="give a directory you can write") from None
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    priv_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p} already exists", code="key.exists",
                             hint="choose another --name or move the old key away")
    _write_pair(((priv_path, pem, 0o600), (pub_path, pub_pem, 0o644)))
    return GeneratedKey(keyid_of(private.public_key()), priv_path, pub_path, passphrase is not None)


def _write_pair(halves: tuple[tuple[Path, bytes, int], ...]) -> None:
    """Both halves to temporary names first, each whole and fsynced, then linked to their names (a link
    never replaces an existing file): a full disk or a refusal leaves neither half, never a 0-byte key that
    blocks the rerun."""
    temps: list[Path] = []
    done: list[Path] = []
    try:
        for path, data, mode in halves:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            # O_EXCL + mode at creation: the key is never readable by others, not even for an instant.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (path, _data, _mode), tmp in zip(halves, temps, strict=True):
            _link_new(tmp, path)
            done.append(path)
        fsync_dir(halves[0][0].parent)
    except FileExistsError as exc:
        for path in done:
            discard(path)
        raise UsageError(f"{exc.filename} appeared while the key was written", code="key.exists",
                         hint="choose another --name or move the old key away") from None
    except OSError as exc:
        for path in done:
            discard(path)
        raise write_error(Path(exc.filename or halves[0][0]), exc) from None
    finally:
        for tmp in temps:
            discard(tmp)


def _link_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` unless that exists; a file system without hard links (a FAT stick) gets a
    rename after a check instead."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.rename(tmp, path)


def checked_passphrase(value: str | bytes) -> bytes:
    """A passphrase the key format can take: UTF-8 (a non-UTF-8 environment variable arrives as surrogates)
    and at most 1023 bytes (the limit of the PKCS#8 encryption cryptography uses)."""
    try:
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        raw.decode("utf-8")
    except UnicodeError:
        raise UsageError("the passphrase is not valid UTF-8 text", code="key.bad_passphrase",
                         hint=f"set {PASSPHRASE_ENV} to UTF-8 text (check the terminal's or the secret "
                              "store's encoding)") from None
    if len(raw) > MAX_PASSPHRASE:
        raise UsageError(f"the passphrase is {len(raw)} bytes, more than the {MAX_PASSPHRASE} a key file can take",
                         code="key.bad_passphrase", hint=f"use a passphrase of at most {MAX_PASSPHRASE} bytes")
    return raw


def load_public_key(path: Path) -> PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = read_bytes(path, what="public key", code="key.unreadable", limit=KEY_FILE_LIMIT)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        # A trust anchor must be a public key: say so rather than guess at a private key file.
        raise UsageError(
            f"{path} is not a PEM public key",
            code="key.invalid",
            hint="pass the .pub file written by 'gptossctl keys generate'",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key", code="key.invalid",
                         hint="gptossctl signs with Ed25519: make keys with 'gptossctl keys generate'")
    weak = weak_key_reason(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    if weak is not None:
        raise UsageError(f"{path} is a weak Ed25519 public key: {weak}", code="key.weak",
                         hint="no key made by 'gptossctl keys generate' is like this: ask its owner for the real "
                              ".pub over a channel you trust, and find out who supplied this one")
    return PublicKey(keyid_of(key), key, str(path))


def env_or_prompt_passphrase(prompt: str) -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return checked_passphrase(value)
    if os.isatty(0):
        return checked_passphrase(getpass.getpass(prompt)) or None
    return None


def load_signing_key(path: Path, *, passphrase: PassphraseSource = env_or_prompt_passphrase) -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = read_bytes(path, what="signing key", code="key.unreadable", limit=KEY_FILE_LIMIT)
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise UsageError(f"{path} is a public key: signing needs the private key", code="key.is_public",
                         hint=f"pass the .key file made with it ({path.with_suffix('.key').name}, if named alike)")
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            code="key.insecure_permissions",
            hint=f"chmod 600 {path}",
        )
    secret: bytes | None = None
    if b"ENCRYPTED" in data:
        secret = passphrase(f"Passphrase for {path}: ")
        if not secret:
            raise EnvironmentNotReady(
                f"signing key {path} is encrypted and no passphrase was given",
                code="key.passphrase_missing",
                hint=f"set {PASSPHRASE_ENV} or run on a terminal to be prompted",
            )
    if secret:
        secret = checked_passphrase(secret)  # whatever the source: never a crash inside cryptography
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except (ValueError, TypeError):
        raise UsageError(
            f"cannot load signing key {path}: wrong passphrase or not a PEM private key",
            code="key.invalid",
            hint=f"check {PASSPHRASE_ENV} (or the passphrase typed), and that --key names the .key file, not the .pub",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 private key", code="key.invalid",
                         hint="gptossctl signs with Ed25519: make keys with 'gptossctl keys generate'")
    return SigningKey(keyid_of(key.public_key()), key, str(path))


def load_key_any(path: Path) -> PublicKey:
    """A public key from a .pub file, for `keys show` (which must work on either half)."""
    data = read_bytes(path, what="key file", code="key.unreadable", limit=KEY_FILE_LIMIT)
    if b"PRIVATE KEY" in data:
        return _public_of_private(path)
    return load_public_key(path)


def _public_of_private(path: Path) -> PublicKey:
    sk = load_signing_key(path)
    return PublicKey(sk.keyid, sk.key.public_key(), str(path))
