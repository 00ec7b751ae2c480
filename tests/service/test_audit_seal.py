"""The audit chain refuses to re-anchor, recovery is one audited command, and each install is sealed in it.

Staged installs through the real CLI: a log cut at its end stays caught however many refusals follow (no
append re-chains from what it finds); a change is refused before it starts when its entry could not be
written; `audit reset` moves the broken log aside and starts a new chain that records the break, which
compliance flags until `audit acknowledge`; the install entry's seal catches a release record, an API key or
a rendered file rewritten together with the host files compliance compares them with."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KeyPair, pack

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
LOG = "var/log/gptoss/audit.jsonl"
HEAD = "var/log/gptoss/audit.head"
ANCHOR = "var/lib/gptossctl/audit.anchor"


def _install(cli, bundle: Path, keys: dict[str, KeyPair], root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable, *extra)


def _entries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (root / LOG).read_text().splitlines()]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _checks(cli, root: Path) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    code, doc = cli("compliance", "check", "--root", str(root))
    return {c["id"]: c for c in doc["data"]["checks"]}


@pytest.fixture()
def two(cli, tiny_model: Path, keys, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Releases 1 and 2 installed (2 current): a log of two entries."""
    root = tmp_path / "root"
    for v in (1, 2):
        assert _install(cli, pack(tmp_path / f"b{v}", tiny_model, [keys["alice"]], version=v), keys, root)[0] == 0
    assert len(_entries(root)) == 2
    return root


def _cut_tail(root: Path) -> None:
    """The red team's cut: the newest entry removed, head and anchor left as they were."""
    log = root / LOG
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))


def test_a_cut_tail_then_a_refusal_does_not_re_anchor(cli, two: Path, tmp_path: Path, keys) -> None:  # type: ignore[no-untyped-def]
    root = two
    _cut_tail(root)
    before = {p: (root / p).read_bytes() for p in (LOG, HEAD, ANCHOR)}
    code, doc = _install(cli, tmp_path / "b2", keys, root, "--host", "0.0.0.0")  # a refusal that is recorded
    assert code == 2 and doc["error"]["code"] == "install.exposed_bind", doc
    assert "audit.unrecorded" in [f["code"] for f in doc["findings"]], doc  # still reported, said unrecorded
    assert {p: (root / p).read_bytes() for p in (LOG, HEAD, ANCHOR)} == before  # nothing appended, nothing re-anchored
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 1 and doc["error"]["code"] == "audit.tampered"
    assert "audit.truncated" in [f["code"] for f in doc["findings"]], doc


@pytest.mark.parametrize("command", ["install", "rollback", "uninstall"])
def test_a_change_is_refused_before_it_starts_on_a_broken_chain(cli, two: Path, tmp_path: Path, keys,  # type: ignore[no-untyped-def]
                                                                 tiny_model: Path, command: str) -> None:
    root = two
    _cut_tail(root)
    log = (root / LOG).read_bytes()
    if command == "install":
        b3 = pack(tmp_path / "b3", tiny_model, [keys["alice"]], version=3)
        code, doc = _install(cli, b3, keys, root, "--dry-run")  # a dry run says the install would be refused
        assert code == 0 and any(s["step"] == "audit" and "audit.tampered" in s["detail"] for s in doc["data"]["steps"])
        code, doc = _install(cli, b3, keys, root)
        assert [s["step"] for s in doc["data"]["steps"]] == ["audit"], doc["data"]["steps"]  # refused first
    else:
        code, doc = cli(command, "--root", str(root))
    assert code == 1 and doc["error"]["code"] == "audit.tampered", doc
    assert "audit reset" in doc["error"]["hint"]
    assert os.readlink(root / "opt/gptoss" / INSTANCE / "current") == "releases/2"  # nothing changed
    assert sorted(p.name for p in (root / "opt/gptoss" / INSTANCE / "releases").iterdir()) == ["1", "2"]
    assert (root / LOG).read_bytes() == log


def test_log_head_and_anchor_deleted_with_an_instance_installed_is_tampered(cli, two: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                            keys) -> None:
    root = two
    for p in (LOG, HEAD, ANCHOR):
        (root / p).unlink()
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 1 and [f["code"] for f in doc["findings"]] == ["audit.missing"], doc
    assert INSTANCE in doc["findings"][0]["message"]
    assert _checks(cli, root)["audit.chain"]["status"] == "fail"
    # A refusal now must not start a fresh chain over the deletion.
    assert _install(cli, tmp_path / "b2", keys, root, "--host", "0.0.0.0")[0] == 2
    assert not (root / LOG).exists() and not (root / ANCHOR).exists()
    assert cli("audit", "verify", "--root", str(root))[0] == 1


def test_reset_starts_a_new_chain_recording_the_break_until_acknowledged(cli, two: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         tiny_model: Path, keys) -> None:
    root = two
    old_anchor = json.loads((root / ANCHOR).read_text())
    _cut_tail(root)
    cut = (root / LOG).read_bytes()
    code, doc = cli("audit", "reset", "--reason", "cut found by the red team", "--root", str(root))
    assert code == 2 and "--yes" in doc["error"]["hint"] and (root / LOG).read_bytes() == cut  # not confirmed
    code, doc = cli("audit", "reset", "--reason", "cut found by the red team", "--yes", "--root", str(root))
    assert code == 0, doc
    (kept,) = (root / "var/log/gptoss").glob("audit.jsonl.broken-*")
    assert kept.read_bytes() == cut and kept.stat().st_mode & 0o777 == 0o640
    (first,) = _entries(root)
    reset = first["reset"]
    assert first["seq"] == 1 and first["result"] == "reset" and first["user"]
    assert reset["schema"] == "gptossctl.audit-reset/1" and reset["reason"] == "cut found by the red team"
    assert (reset["previous"]["seq"], reset["previous"]["hash"]) == (old_anchor["seq"], old_anchor["hash"])
    assert "audit.truncated" in [f["code"] for f in reset["findings"]]
    assert cli("audit", "verify", "--root", str(root))[0] == 0
    chain = _checks(cli, root)["audit.chain"]
    assert chain["status"] == "fail" and any("acknowledge" in e for e in chain["evidence"]), chain
    # Nothing to reset on an intact chain; acknowledged once, then it passes.
    code, doc = cli("audit", "reset", "--reason", "again", "--yes", "--root", str(root))
    assert code == 2 and doc["error"]["code"] == "audit.nothing_to_reset", doc
    code, doc = cli("audit", "acknowledge", "--root", str(root))
    assert code == 2 and "--yes" in doc["error"]["hint"]
    assert cli("audit", "acknowledge", "--yes", "--root", str(root))[0] == 0
    assert _entries(root)[-1]["acknowledge"]["reset_hash"] == first["hash"]
    assert _checks(cli, root)["audit.chain"]["status"] == "pass"
    code, doc = cli("audit", "acknowledge", "--yes", "--root", str(root))
    assert code == 2 and doc["error"]["code"] == "audit.nothing_to_acknowledge", doc
    # Changes are recorded again, on the new chain.
    assert _install(cli, pack(tmp_path / "b3", tiny_model, [keys["alice"]], version=3), keys, root)[0] == 0
    assert [e["result"] for e in _entries(root)] == ["reset", "acknowledged", "ok"]


def test_a_staged_install_and_a_rollback_carry_the_seal(cli, two: Path) -> None:  # type: ignore[no-untyped-def]
    root = two
    rel = root / "opt/gptoss" / INSTANCE / "releases/2"
    key = root / "etc/gptoss" / INSTANCE / "api-key"
    seal = _entries(root)[-1]["seal"]
    assert seal["schema"] == "gptossctl.install-seal/1" and (seal["instance"], seal["version"]) == (INSTANCE, 2)
    assert seal["python"] == sys.executable and seal["release_json"] == _sha(rel / "release.json")
    assert seal["api_key"] == _sha(key) and seal["listing"] is None  # --vllm-python: no environment built
    assert seal["files"] == {n: _sha(rel / n) for n in ("router.conf", "router.service", "service-r0.env", "unit-r0.service",
                                                      "vllm-r0.yaml")}
    assert key.read_text().strip() not in (root / LOG).read_text()
    assert cli("rollback", "--root", str(root))[0] == 0
    last = _entries(root)[-1]
    assert last["command"][0] == "rollback" and last["seal"]["version"] == 1
    assert last["seal"]["release_json"] == _sha(root / "opt/gptoss" / INSTANCE / "releases/1/release.json")
    assert _checks(cli, root)["record.sealed"]["status"] == "pass"


def _edit(p: Path, old: str, new: str) -> None:
    text = p.read_text()
    assert old in text, f"{old!r} not in {p}"
    p.write_text(text.replace(old, new))


def _python_with_unit(root: Path) -> str:
    """release.json names another interpreter, and the unit (installed and the release's copy) runs it."""
    rel = root / "opt/gptoss" / INSTANCE / "releases/2"
    _edit(rel / "release.json", json.dumps(sys.executable), json.dumps("/tmp/evil/python"))
    for unit in (rel / "unit-r0.service", root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service"):
        _edit(unit, sys.executable, "/tmp/evil/python")
    return "release.json"


def _key_with_env(root: Path) -> str:
    """A replaced API key, with service.env rendered for it."""
    key = root / "etc/gptoss" / INSTANCE / "api-key"
    old, new = key.read_text().strip(), "k" * 43
    key.write_text(new + "\n")
    _edit(root / "opt/gptoss" / INSTANCE / "releases/2/service-r0.env", old, new)
    return "api-key"


@pytest.mark.parametrize("tamper", [_python_with_unit, _key_with_env], ids=["python", "api-key"])
def test_a_record_rewritten_with_its_host_file_fails_the_seal(cli, two: Path, tamper) -> None:  # type: ignore[no-untyped-def]
    root = two
    assert _checks(cli, root)["record.sealed"]["status"] == "pass"
    named = tamper(root)
    checks = _checks(cli, root)
    sealed = checks["record.sealed"]
    assert sealed["status"] == "fail" and any(named in e for e in sealed["evidence"]), sealed


def test_an_install_without_a_seal_is_a_warning_to_roll_forward(cli, two: Path) -> None:  # type: ignore[no-untyped-def]
    """Installed by an older gptossctl: the chain holds no seal for the current release."""
    root = two
    for p in (LOG, HEAD, ANCHOR):
        (root / p).unlink()
    assert cli("audit", "reset", "--reason", "older gptossctl", "--yes", "--root", str(root))[0] == 0
    sealed = _checks(cli, root)["record.sealed"]
    assert sealed["status"] == "warn" and any("reinstall" in e for e in sealed["evidence"]), sealed


def test_a_rollback_target_whose_record_changed_since_its_seal_is_refused(cli, two: Path) -> None:  # type: ignore[no-untyped-def]
    """Rollback re-hashes its target's payload and rendered files; the record itself is checked against its seal
    (an interpreter named in release.json alone would otherwise be served)."""
    root = two
    rec = root / "opt/gptoss" / INSTANCE / "releases/1/release.json"
    _edit(rec, json.dumps(sys.executable), json.dumps("/tmp/evil/python"))
    code, doc = cli("rollback", "--root", str(root))
    assert code == 1 and doc["error"]["code"] == "rollback.drift", doc
    assert [f["subject"] for f in doc["findings"] if f["code"] == "record.sealed"][0].endswith("releases/1/release.json")
    assert os.readlink(root / "opt/gptoss" / INSTANCE / "current") == "releases/2"


def test_reset_sets_aside_whatever_stands_in_the_logs_place(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A FIFO where the log should be: verify says so without hanging; reset moves it aside unread."""
    root = tmp_path / "root"
    (root / "var/log/gptoss").mkdir(parents=True)
    os.mkfifo(root / LOG)
    code, doc = cli("audit", "verify", "--root", str(root))
    assert code == 1 and doc["findings"][0]["code"] == "audit.not_a_file"
    code, doc = cli("audit", "reset", "--reason", "a FIFO stood there", "--yes", "--root", str(root))
    assert code == 0, doc
    assert [f["code"] for f in doc["data"]["reset"]["findings"]] == ["audit.not_a_file"]
    (kept,) = (root / "var/log/gptoss").glob("audit.jsonl.broken-*")
    assert kept.is_fifo() and cli("audit", "verify", "--root", str(root))[0] == 0


def test_an_install_that_would_reuse_a_release_changed_since_its_seal_is_refused(cli, two: Path, keys,  # type: ignore[no-untyped-def]
                                                                                 tmp_path: Path) -> None:
    """Reinstalling the current bundle reuses its release as it stands: a record changed since its seal would be
    sealed again as approved. Refused, naming the file; --repair unpacks it again from the signed bundle."""
    root = two
    rec = root / "opt/gptoss" / INSTANCE / "releases/2/release.json"
    _edit(rec, json.dumps(sys.executable), json.dumps("/tmp/evil/python"))
    changed = rec.read_bytes()
    code, doc = _install(cli, tmp_path / "b2", keys, root)
    assert code == 1 and doc["error"]["code"] == "install.record_changed", doc
    assert "--repair" in doc["error"]["hint"] and rec.read_bytes() == changed
    assert _install(cli, tmp_path / "b2", keys, root, "--repair")[0] == 0
    assert json.loads(rec.read_text())["python"] == sys.executable
    assert _checks(cli, root)["record.sealed"]["status"] == "pass"
