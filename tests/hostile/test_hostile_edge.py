"""The edge's commands (consumers, tls, usage) through the installed console script, fed wrong: each refusal
exits 1-4 with one JSON document whose error says what to do next, no traceback, and nothing changed (the
staged tree compared byte for byte, the audit trail aside: it records changes, by design)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gptossctl.compliance.support import collect, write_support_bundle

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
INSTANCE_KEY = "instance-key-0123456789abcdefghijklmnop"


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("var/log/gptoss", "var/lib/gptossctl")) or p.is_dir():
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


def run(*args: str) -> tuple[int, dict[str, Any], str]:
    res = subprocess.run([str(GPTOSSCTL), *args, "--json"], capture_output=True, text=True, timeout=60)
    return res.returncode, json.loads(res.stdout), res.stderr


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    etc = tmp_path / "root" / "etc" / "gptoss" / "inst"
    etc.mkdir(parents=True)
    (etc / "api-key").write_text(f"VLLM_API_KEY={INSTANCE_KEY}\n")
    code, doc, _ = run("consumers", "add", "alice", "--instance", "inst", "--root", str(tmp_path / "root"),
                       "--out", str(tmp_path / "alice.key"))
    assert code == 0, doc
    return tmp_path / "root"


def refused(root: Path, args: list[str], codes: tuple[int, ...], error: str) -> dict[str, Any]:
    before = _tree(root)
    code, doc, err = run(*args)
    assert code in codes, doc
    assert doc["status"] in ("error", "failed") and doc["error"]["code"] == error, doc
    assert doc["error"]["hint"] and "Traceback" not in err
    assert _tree(root) == before
    return doc


def test_consumer_commands_refuse_bad_input_and_change_nothing(root: Path, tmp_path: Path) -> None:
    where = ["--instance", "inst", "--root", str(root)]
    refused(root, ["consumers", "add", "Bad;Name", *where], (2,), "consumers.bad_name")
    refused(root, ["consumers", "add", "alice", *where], (2,), "consumers.exists")
    refused(root, ["consumers", "revoke", "nobody", *where], (2,), "consumers.unknown")
    refused(root, ["consumers", "rotate", "alice", "--grace", "forever", *where], (2,), "usage.bad_duration")
    refused(root, ["consumers", "add", "carol", "--out", str(tmp_path / "alice.key"), *where], (2,),
            "output.exists")
    refused(root, ["consumers", "add", "carol", "--instance", "missing", "--root", str(root)], (3,),
            "consumers.no_instance")
    (root / "etc/gptoss/inst/consumers.json").write_text('{"schema": "gptossctl.consumers/9"}')
    refused(root, ["consumers", "add", "carol", *where], (1,), "consumers.bad_registry")


def test_a_key_cannot_be_given_in_argv(root: Path) -> None:
    before = _tree(root)
    for flag in ("--key", "--api-key"):
        code, doc, _ = run("consumers", "add", "carol", flag, "sk-gptoss-" + "k" * 43, "--instance", "inst",
                           "--root", str(root))
        assert code == 2 and doc["error"]["code"] == "usage"
    assert _tree(root) == before


def test_keys_stay_in_root_only_files_and_out_of_records(root: Path, tmp_path: Path) -> None:
    key = (tmp_path / "alice.key").read_text().strip()
    assert (tmp_path / "alice.key").stat().st_mode & 0o777 == 0o600
    edge = root / "etc/gptoss/inst/edge"
    assert edge.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in edge.iterdir())
    code, doc, _ = run("consumers", "list", "--instance", "inst", "--root", str(root))
    assert code == 0 and key not in json.dumps(doc)
    assert key not in (root / "etc/gptoss/inst/consumers.json").read_text()
    audit = (root / "var/log/gptoss/audit.jsonl").read_text()
    assert "consumers add alice" in audit and key not in audit


def test_tls_and_usage_refuse_missing_and_bad_files(root: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    where = ["--instance", "inst", "--root", str(root)]
    refused(root, ["tls", "rotate", "--cert", str(tmp_path / "nope.pem"), "--key", str(junk), "--ca", str(junk),
                   *where], (2,), "tls.unreadable")
    refused(root, ["tls", "rotate", "--cert", str(junk), "--key", str(junk), "--ca", str(junk), *where], (2,),
            "tls.bad_certificate")
    refused(root, ["usage", *where], (2,), "usage.no_log")
    refused(root, ["usage", "--by", "team", *where], (2,), "usage.bad_by")
    refused(root, ["usage", "--format", "xml", *where], (2,), "usage.bad_format")
    log = root / "var/log/gptoss/edge/edge-inst.access.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    (log.parent / (log.name + ".2.gz")).write_bytes(b"\x1f\x8b not gzip")
    refused(root, ["usage", *where], (2,), "usage.bad_log")


def test_support_bundle_lists_the_edge_without_a_key(root: Path, tmp_path: Path) -> None:
    key = (tmp_path / "alice.key").read_text().strip()
    (root / "opt/gptoss/inst").mkdir(parents=True)
    log = root / "var/log/gptoss/edge/edge-inst.access.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps({"time": "2026-12-01T10:00:00+00:00", "consumer": "alice", "status": "200"}) + "\n"
                   + json.dumps({"time": "2026-12-01T10:00:01+00:00", "consumer": key, "status": "200"}) + "\n")
    members = collect(root, "inst")
    assert '"alice"' in members["edge/access.jsonl"] and "alice" in members["edge/consumers.json"]
    out = tmp_path / "support.tar.gz"
    res = write_support_bundle(root, "inst", out)
    with tarfile.open(out) as tar:
        text = "".join(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert "edge/access.jsonl" in res.members and key not in text  # a key that reached the log is redacted


def test_install_refuses_a_bad_listener_before_reading_the_bundle(root: Path, tmp_path: Path) -> None:
    """install --listen: a key of another certificate, an address that is not one, TLS files without --listen:
    exit 2 with one document, the hint, no traceback, nothing changed (judged before the bundle is read)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "90", "-subj", f"/CN={name}"],
                       cwd=pki, check=True, capture_output=True)
    base = ["install", str(tmp_path / "no-bundle"), "--root", str(root), "--vllm-python", sys.executable]
    doc = refused(root, [*base, "--listen", "127.0.0.1:8443", "--tls-cert", str(pki / "a.pem"), "--tls-key",
                         str(pki / "b.key")], (2,), "install.tls_refused")
    assert [f["code"] for f in doc["findings"]] == ["tls.key_mismatch"]
    refused(root, [*base, "--listen", "127.0.0.1", "--tls-cert", str(pki / "a.pem"), "--tls-key",
                   str(pki / "a.key")], (2,), "install.bad_listen")
    refused(root, [*base, "--tls-key", str(pki / "a.key")], (2,), "install.tls_without_listen")
    refused(root, [*base, "--listen", "[::1]:8443"], (2,), "install.listen_needs_tls")


def test_tls_rotate_refuses_an_unsupported_curve_with_a_usage_error(root: Path, tmp_path: Path) -> None:
    """A real sect163k1 certificate and key (OpenSSL makes them; cryptography cannot use them): exit 2, not 70."""
    for args in (["ecparam", "-name", "sect163k1", "-genkey", "-noout", "-out", "k.pem"],
                 ["req", "-x509", "-new", "-key", "k.pem", "-subj", "/CN=s163", "-days", "30", "-out", "c.pem"]):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    refused(root, ["tls", "rotate", "--cert", cert, "--key", key, "--ca", cert, "--instance", "inst", "--root",
                   str(root)], (2,), "tls.bad_certificate")
