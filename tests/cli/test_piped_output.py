"""Output read by a program, a log or Ansible, not a person at a terminal: the installed console script run
with stdout and stderr through pipes (`gptossctl ... | cat`) and stdin not a terminal either. No value may be
cut with "…" (Rich did so at 80 columns, the width it assumes without a terminal), and the long values every
command prints (whole paths, versions, URLs, digests) must appear whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KeyPair, pack

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
CAPTURE = Path(__file__).resolve().parents[1] / "data" / "h100-lease" / "h100-nvidia-smi-q.xml"
VERSION = "202612071430"  # the default version shape, YYYYMMDDHHMM: 12 digits, which a cell cut
ELLIPSIS = "\u2026"


def piped(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script as `... </dev/null | cat` runs it: no terminal anywhere, no COLUMNS."""
    clean = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run([str(GPTOSSCTL), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, env={**clean, **(env or {})})


def whole(res: subprocess.CompletedProcess[str], *values: str) -> str:
    out = res.stdout + res.stderr
    assert ELLIPSIS not in out, out
    for v in values:
        assert v in out, f"{v!r} not printed whole in:\n{out}"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> Iterator[dict[str, str]]:
    """A bundle and a staged install, both under paths longer than any 80-column cell."""
    base = tmp_path_factory.mktemp("piped") / "a-site-with-rather-long-directory-names" / "for-the-staging-tree"
    bundle = pack(base / "bundles" / "tiny-demo-signed-by-alice-for-the-pipe-test", tiny_model, [keys["alice"]],
                  version=int(VERSION))
    root = base / "staged-root-of-the-host"
    r = piped("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
              "--vllm-python", sys.executable, "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tampered = base / "tampered-copy-of-the-bundle"
    shutil.copytree(bundle, tampered, symlinks=True)
    weights = tampered / "payload/model/model-00000-of-00001.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    yield {"bundle": str(bundle), "root": str(root), "pub": str(keys["alice"].public), "tampered": str(tampered),
           "keyid": keys["alice"].keyid}


def test_status_prints_version_and_endpoint_whole_through_a_pipe(world: dict[str, str]) -> None:
    r = piped("status", "--root", world["root"])
    assert r.returncode in (0, 1), r.stderr
    whole(r, VERSION, "http://127.0.0.1:8000", "127.0.0.1:8001")


def test_compliance_check_prints_evidence_whole_through_a_pipe(world: dict[str, str]) -> None:
    r = piped("compliance", "check", "--root", world["root"])
    assert r.returncode == 0, r.stdout + r.stderr
    whole(r, world["root"], "/etc/gptoss/tiny-gpt-oss/api-key", "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1",
          "gptoss@tiny-gpt-oss-r0.service")


def test_install_dry_run_prints_step_details_whole_through_a_pipe(world: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "another-staged-root-with-a-long-name-for-the-dry-run"
    r = piped("install", world["bundle"], "--trust", world["pub"], "--root", str(root), "--dry-run",
              "--vllm-python", sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    whole(r, world["bundle"], f"{root}/opt/gptoss/tiny-gpt-oss/releases/{VERSION}", sys.executable)


def test_bundle_verify_and_inspect_print_whole_and_a_failed_verify_names_the_file_whole(world: dict[str, str]) -> None:
    r = piped("bundle", "verify", world["bundle"], "--trust", world["pub"])
    assert r.returncode == 0, r.stdout + r.stderr
    whole(r, world["bundle"], VERSION, world["keyid"])
    r = piped("bundle", "inspect", world["bundle"])
    assert r.returncode == 0, r.stdout + r.stderr
    whole(r, VERSION, "gptossctl/tiny-gpt-oss")
    r = piped("bundle", "verify", world["tampered"], "--trust", world["pub"])
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(piped("bundle", "verify", world["tampered"], "--trust", world["pub"], "--json").stdout)
    finding = next(f for f in doc["findings"] if f["code"] == "bundle.digest_mismatch")
    whole(r, "bundle.digest_mismatch", finding["subject"], finding["message"])


def test_hw_check_and_profiles_list_on_a_capture_print_whole_through_a_pipe(world: dict[str, str]) -> None:
    r = piped("hw", "check", "--nvidia-smi-xml", str(CAPTURE))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    doc = json.loads(piped("hw", "check", "--nvidia-smi-xml", str(CAPTURE), "--json").stdout)
    checks = [c for m in doc["data"]["models"] for c in m["checks"]]
    whole(r, *{c["subject"] for c in checks}, *{c["message"] for c in checks})
    r = piped("profiles", "list", "--nvidia-smi-xml", str(CAPTURE))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    whole(r, "NVIDIA H100")


def test_trust_show_keys_show_and_audit_verify_print_whole_through_a_pipe(world: dict[str, str]) -> None:
    r = piped("trust", "show", "--root", world["root"])
    assert r.returncode == 0, r.stdout + r.stderr
    digest = json.loads(piped("trust", "show", "--root", world["root"], "--json").stdout)["data"]["digest"]
    whole(r, digest, world["keyid"])
    r = piped("keys", "show", world["pub"])
    assert r.returncode == 0, r.stdout + r.stderr
    whole(r, world["keyid"])
    r = piped("audit", "verify", "--root", world["root"])
    assert r.returncode == 0, r.stdout + r.stderr
    whole(r, world["root"])


def _at_a_terminal(*args: str) -> str:
    """stdout a terminal 80 columns wide (a pseudo-terminal), as a person at a console sees the command."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.Popen([str(GPTOSSCTL), *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.DEVNULL, env={**env, "COLUMNS": "80", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_plain_prints_whole_at_a_terminal_too(world: dict[str, str]) -> None:
    fitted = _at_a_terminal("status", "--root", world["root"])
    assert "\u2026" in fitted  # at a terminal, without --plain, the table fits the window (the check can fail)
    plain = _at_a_terminal("--plain", "status", "--root", world["root"])
    assert "\u2026" not in plain and VERSION in plain and "http://127.0.0.1:8000" in plain, plain
