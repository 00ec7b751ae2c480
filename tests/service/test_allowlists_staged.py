"""Signed content never grants privilege, through the real CLI and a real staged tree: a bundle signed by a
trusted key whose unit template or profile was changed (re-signed, as a packer with a key could) installs
nothing, and compliance fails on an installed unit or environment file that breaks the invariants even when
the release's own copies were changed to match."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.manifest import parse_manifest, sha256sums_text
from tests.conftest import KeyPair
from tests.integration.test_tamper_matrix import resign

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
UNIT = "payload/systemd/gptoss@.service"
PROFILE = "payload/profiles/cpu-tiny.yaml"
EVIL_UNIT_LINE = "ExecStartPre=+/bin/true\n"


def _edit_signed(bundle: Path, rel: str, edit: Any, signer: KeyPair, *, version: int | None = None) -> None:
    """Change one payload file and sign the manifest again, with its new digest, with a trusted key (and, given
    `version`, as that version: an upgrade rather than another build of an installed version)."""
    path = bundle / rel
    path.write_text(edit(path.read_text()))
    data = path.read_bytes()

    def fix(doc: dict[str, Any]) -> None:
        for f in doc["files"]:
            if "payload/" + f["path"] == rel:
                f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        files = parse_manifest(json.dumps({**doc, "sha256sums": "0" * 64}).encode()).files
        sums = sha256sums_text(files)
        (bundle / "SHA256SUMS").write_bytes(sums)
        doc["sha256sums"] = hashlib.sha256(sums).hexdigest()
        if version is not None:
            doc["version"] = version

    resign(bundle, fix, signer)


def _install(cli, bundle: Path, keys: dict[str, KeyPair], root: Path):  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not str(p.relative_to(root)).startswith("var")) \
        if root.exists() else []


def _privileged(text: str) -> str:
    return text.replace("[Service]\n", "[Service]\n" + EVIL_UNIT_LINE, 1)


def test_a_signed_bundle_whose_unit_template_differs_installs_nothing(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _edit_signed(bundle, UNIT, _privileged, keys["alice"])
    assert cli("bundle", "verify", str(bundle), "--trust", str(keys["alice"].public))[0] == 0  # validly signed
    code, doc = _install(cli, bundle, keys, tmp_path / "root")
    assert code == 1 and doc["error"]["code"] == "install.unit_template_differs", doc.get("error")
    finding = doc["findings"][0]
    assert finding["subject"] == UNIT and "ExecStartPre=+/bin/true" in finding["message"]
    assert "repack" in doc["error"]["hint"]
    assert _tree(tmp_path / "root") == []


RELEASED_UNIT = Path(__file__).resolve().parents[1] / "data" / "released-units" / "gptoss@.service"


def test_a_bundle_packed_with_an_earlier_gptossctls_template_installs_rendered_from_todays(  # type: ignore[no-untyped-def]
        cli, bundle: Path, keys, tmp_path: Path) -> None:
    # What a bundle packed by an earlier gptossctl carries (the template at 92061e8, with ProcSubset=pid, which
    # vLLM cannot run under): it still installs once gptossctl is upgraded, and the unit installed is today's
    # rendering, not the bundle's text.
    old = RELEASED_UNIT.read_text()
    _edit_signed(bundle, UNIT, lambda _t: old, keys["alice"])
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc.get("error")
    unit = (root / "etc/systemd/system" / f"gptoss@{INSTANCE}-r0.service").read_text()
    assert "\nProcSubset=pid\n" in old and "\nProcSubset=pid\n" not in unit and "AF_NETLINK" in unit
    # A text no gptossctl shipped is still refused, even one line away from an earlier one.
    _edit_signed(bundle, UNIT, lambda _t: _privileged(old), keys["alice"])
    code, doc = _install(cli, bundle, keys, tmp_path / "root2")
    assert code == 1 and doc["error"]["code"] == "install.unit_template_differs", doc.get("error")
    assert _tree(tmp_path / "root2") == []


@pytest.mark.parametrize("name", ["NCCL_NET_PLUGIN", "PYTHONPYCACHEPREFIX", "TRITON_LIBCUDA_PATH", "LD_AUDIT",
                                  "OPENSSL_CONF", "HF_MODULES_CACHE"])
def test_a_signed_profile_with_a_code_loading_variable_installs_nothing(cli, bundle: Path, keys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         name: str) -> None:
    _edit_signed(bundle, PROFILE, lambda t: t.replace('VLLM_CPU_KVCACHE_SPACE: "1"',
                                                      f'VLLM_CPU_KVCACHE_SPACE: "1"\n    {name}: /tmp/x'), keys["alice"])
    code, doc = _install(cli, bundle, keys, tmp_path / "root")
    assert code in (1, 2) and doc["error"]["code"] == "profile.invalid", doc.get("error")
    assert name in doc["error"]["hint"] and "PROFILE_ENV" in doc["error"]["hint"]
    assert _tree(tmp_path / "root") == []


@pytest.fixture()
def installed(cli, bundle: Path, keys, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    return root


def _checks(cli, root: Path) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    _code, doc = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    return {c["id"]: c for c in doc["data"]["checks"]}


def test_compliance_fails_on_a_variable_outside_the_allowlist_added_with_the_profile(cli, installed: Path) -> None:  # type: ignore[no-untyped-def]
    release = installed / "opt/gptoss" / INSTANCE / "releases/5"
    assert _checks(cli, installed)["config.release_files"]["status"] == "pass"
    env = release / "service-r0.env"
    env.write_text(env.read_text() + "NCCL_NET_PLUGIN=/tmp/x.so\n")
    prof = release / PROFILE
    prof.write_text(prof.read_text().replace('VLLM_CPU_KVCACHE_SPACE: "1"',
                                             'VLLM_CPU_KVCACHE_SPACE: "1"\n    NCCL_NET_PLUGIN: /tmp/x.so'))
    check = _checks(cli, installed)["config.release_files"]
    assert check["status"] == "fail"
    assert any("NCCL_NET_PLUGIN" in e and "PROFILE_ENV" in e for e in check["evidence"]), check


def test_compliance_renders_from_gptossctls_own_template_not_the_releases(cli, installed: Path) -> None:  # type: ignore[no-untyped-def]
    release = installed / "opt/gptoss" / INSTANCE / "releases/5"
    unit = installed / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service"
    for p in (release / UNIT, release / "unit-r0.service", unit):  # the release's template, its copy, the unit
        p.write_text(_privileged(p.read_text()))
    check = _checks(cli, installed)["config.unit"]
    assert check["status"] == "fail"
    assert any("ExecStartPre=+/bin/true" in e for e in check["evidence"]), check
