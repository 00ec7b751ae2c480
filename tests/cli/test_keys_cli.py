from __future__ import annotations

from pathlib import Path


def test_keys_generate_and_show(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("keys", "generate", "--out", str(tmp_path), "--name", "ops",
                    env={"GPTOSSCTL_KEY_PASSPHRASE": "s3cret-pass"})
    assert code == 0 and doc["data"]["encrypted"] is True
    keyid = doc["data"]["keyid"]
    assert (tmp_path / "ops.key").stat().st_mode & 0o777 == 0o600
    assert b"s3cret-pass" not in (tmp_path / "ops.key").read_bytes()
    code, doc = cli("keys", "show", str(tmp_path / "ops.pub"))
    assert code == 0 and doc["data"]["keyid"] == keyid


def test_keys_generate_without_passphrase_source_exits_3(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("keys", "generate", "--out", str(tmp_path), "--name", "ops", env={"GPTOSSCTL_KEY_PASSPHRASE": ""})
    assert code == 3 and doc["error"]["code"] == "key.passphrase_missing"
    assert not (tmp_path / "ops.key").exists()


def test_keys_generate_unencrypted_is_explicit(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("keys", "generate", "--out", str(tmp_path), "--name", "ops", "--unencrypted")
    assert code == 0 and doc["data"]["encrypted"] is False
    assert b"ENCRYPTED" not in (tmp_path / "ops.key").read_bytes()
