from __future__ import annotations

import os
from pathlib import Path

import pytest

from gptossctl.bundle.keys import generate_key, load_public_key, load_signing_key
from gptossctl.errors import EnvironmentNotReady, UsageError


def test_private_key_is_encrypted_and_0600(tmp_path: Path) -> None:
    g = generate_key(tmp_path, "k", passphrase=b"pw")
    assert g.private_path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in g.private_path.read_bytes()
    assert load_signing_key(g.private_path, passphrase=lambda _p: b"pw").keyid == g.keyid == load_public_key(g.public_path).keyid


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    g = generate_key(tmp_path, "k", passphrase=b"pw")
    with pytest.raises(UsageError) as exc:
        load_signing_key(g.private_path, passphrase=lambda _p: b"nope")
    assert exc.value.code == "key.invalid"


def test_missing_passphrase_cannot_proceed(tmp_path: Path) -> None:
    g = generate_key(tmp_path, "k", passphrase=b"pw")
    with pytest.raises(EnvironmentNotReady):
        load_signing_key(g.private_path, passphrase=lambda _p: None)


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    g = generate_key(tmp_path, "k", passphrase=b"pw")
    os.chmod(g.private_path, 0o640)
    with pytest.raises(UsageError) as exc:
        load_signing_key(g.private_path, passphrase=lambda _p: b"pw")
    assert exc.value.code == "key.insecure_permissions" and "chmod 600" in (exc.value.hint or "")


def test_generate_never_overwrites(tmp_path: Path) -> None:
    generate_key(tmp_path, "k", passphrase=b"pw")
    with pytest.raises(UsageError):
        generate_key(tmp_path, "k", passphrase=b"pw")


def test_private_key_is_not_a_trust_anchor(tmp_path: Path) -> None:
    g = generate_key(tmp_path, "k", passphrase=None)
    with pytest.raises(UsageError) as exc:
        load_public_key(g.private_path)
    assert exc.value.code == "key.invalid"
