"""`gptossctl compliance check` on a staged install with a real environment built by uv from the bundle's
wheels: a clean install passes every check; each tampering is caught by the right check, with its
remediation, and nothing else fails. The outputs load in the real consumers: SARIF in Microsoft's SARIF
multitool and against the SARIF 2.1.0 schema it ships, JUnit in junitparser, the textfile in
prometheus_client's parser. (A booted systemd: tests/integration/test_systemd_install.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KeyPair
from tests.integration.test_pack_real import ENV, WHEELS, write_recipe

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
SARIF_TOOL = "5.7.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptossctl-tests"
RULE_IDS = ["release.current", "bundle.signatures", "bundle.expiry", "drift.payload", "drift.environment",
            "record.sealed", "config.unit", "config.release_files", "config.exposure", "config.offline", "config.usage_stats",
            "config.bind", "access.api_key", "access.secrets", "access.permissions", "license.model",
            "provenance.sbom", "audit.chain", "service.running", "edge.tls"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair],
              wheelhouse: Path, kernels_dir: Path) -> Path:
    """A staged tree with release 5 installed from a bundle with wheels: a real uv environment."""
    from typer.testing import CliRunner

    from gptossctl.cli.main import app

    work = tmp_path_factory.mktemp("compliance")
    recipe = write_recipe(work, vllm={"version": "0.33.0"}, wheels={**WHEELS, "dir": str(wheelhouse)},
                          kernels={"dir": str(kernels_dir)}, profiles=["cpu-tiny"], units=["gptoss@.service"],
                          expires_in="90d")
    runner = CliRunner()
    res = runner.invoke(app, ["bundle", "pack", str(recipe), "--out", str(work / "bundle"), "--key",
                              str(keys["alice"].private), "--model-dir", str(tiny_model), "--version", "5", "--json"],
                        env=ENV, catch_exceptions=False)
    assert res.exit_code == 0, res.stdout
    root = work / "root"
    # The release's environment is built on the target's /usr/bin/python3, found under the staging root: links
    # are followed inside the tree (install/checklist.resolve_in_root), so the tree holds its own python3.N, a
    # wrapper that runs this host's (a link to the host's path would name the target's, absent from the tree).
    host_python = os.path.realpath("/usr/bin/python3")
    (root / "usr" / "bin").mkdir(parents=True)
    wrapper = root / "usr" / "bin" / Path(host_python).name
    wrapper.write_text(f'#!/bin/sh\nexec {host_python} "$@"\n')
    wrapper.chmod(0o755)
    (root / "usr" / "bin" / "python3").symlink_to(wrapper.name)
    res = runner.invoke(app, ["install", str(work / "bundle"), "--trust", str(keys["alice"].public), "--root",
                              str(root), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stdout
    return root


@pytest.fixture()
def tree(installed: Path, tmp_path: Path) -> Path:
    """Each test tampers with its own copy of the installed tree."""
    dst = tmp_path / "root"
    shutil.copytree(installed, dst, symlinks=True)
    return dst


def _check(cli, root: Path, *extra: str) -> tuple[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    return cli("compliance", "check", "--root", str(root), *extra)


def _status(doc: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in doc["data"]["checks"]}


def _failed(doc: dict[str, Any]) -> set[str]:
    return {k for k, v in _status(doc).items() if v == "fail"}


def _rel(root: Path) -> Path:
    return root / "opt/gptoss" / INSTANCE / "releases/5"


def _key(root: Path) -> str:
    return (root / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()


@pytest.fixture(scope="session")
def sarif_multitool() -> Path:
    """Microsoft's SARIF multitool (npm), which also ships the SARIF 2.1.0 JSON schema; cached."""
    d = CACHE / f"sarif-multitool-{SARIF_TOOL}"
    pkg = d / "node_modules" / "@microsoft" / "sarif-multitool-linux"
    if not (pkg / "Sarif.Multitool").exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install the SARIF multitool (scripts/test.sh installs it)"
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(d),
                        f"@microsoft/sarif-multitool@{SARIF_TOOL}"], check=True, capture_output=True)
    (pkg / "Sarif.Multitool").chmod(0o755)
    return pkg


def test_a_clean_install_passes_every_check_and_every_format_loads(cli, tree: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   sarif_multitool: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # report paths must be in an existing directory (output.no_directory)
    code, doc = _check(cli, tree, "--sarif", str(out / "c.sarif"), "--junit", str(out / "c.xml"),
                       "--report", str(out / "c.json"), "--textfile", str(out / "c.prom"))
    assert code == 0, json.dumps(doc["data"], indent=1)
    d = doc["data"]
    assert [c["id"] for c in d["checks"]] == RULE_IDS
    assert set(_status(doc).values()) == {"pass"}, _status(doc)
    for c in d["checks"]:
        assert c["evidence"] and c["remediation"] and c["controls"] and c["severity"] in ("high", "medium")
    by = {c["id"]: c for c in d["checks"]}
    assert "7 Python packages" in " ".join(by["provenance.sbom"]["evidence"])  # the wheels and kernels, installed
    assert by["drift.environment"]["evidence"][0].split()[0].isdigit()
    assert by["config.exposure"]["evidence"][0].startswith(f"gptoss@{INSTANCE}-r0.service: exposure 1.")
    assert json.loads((out / "c.json").read_text())["checks"] == d["checks"]
    # SARIF: valid against the 2.1.0 schema and clean in Microsoft's validator.
    import jsonschema

    sarif = json.loads((out / "c.sarif").read_text())
    schema = json.loads((sarif_multitool / "sarif-2.1.0.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(sarif)
    assert [r["kind"] for r in sarif["runs"][0]["results"]] == ["pass"] * len(RULE_IDS)
    _multitool_validate(sarif_multitool, out / "c.sarif", tmp_path)
    # JUnit: loads in junitparser with one passing case per check.
    from junitparser import JUnitXml

    xml = JUnitXml.fromfile(str(out / "c.xml"))
    suites = list(xml)
    assert sum(s.tests for s in suites) == len(RULE_IDS) and sum(s.failures for s in suites) == 0
    # Prometheus textfile: parsed by the client library's own parser.
    from prometheus_client.parser import text_string_to_metric_families

    metrics = {f.name: f for f in text_string_to_metric_families((out / "c.prom").read_text())}
    assert [s.value for s in metrics["gptoss_compliance_ok"].samples] == [1.0]
    statuses = {s.labels["check"]: s.value for s in metrics["gptoss_compliance_check_status"].samples}
    assert statuses == dict.fromkeys(RULE_IDS, 0.0)
    # The key is in none of them.
    key = _key(tree)
    for f in out.iterdir():
        assert key not in f.read_text()


def _multitool_validate(pkg: Path, sarif: Path, tmp: Path) -> dict[str, Any]:
    log = tmp / "validation.sarif"
    res = subprocess.run([str(pkg / "Sarif.Multitool"), "validate", str(sarif), "--output", str(log)],
                         capture_output=True, text=True, env={**os.environ, "DOTNET_SYSTEM_GLOBALIZATION_INVARIANT": "1"})
    assert log.exists(), res.stdout[-2000:] + res.stderr[-2000:]
    found = json.loads(log.read_text())
    errors = [r for run in found["runs"] for r in run.get("results", []) if r.get("level", "warning") == "error"]
    assert not errors, json.dumps(errors, indent=1)[:3000]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return found


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _edit(p: Path, old: str, new: str) -> None:
    text = p.read_text()
    assert old in text, f"{old!r} not in {p}"
    p.write_text(text.replace(old, new, 1))


def _weights(root: Path) -> None:
    (w,) = (_rel(root) / "payload/model").glob("*.safetensors")
    _flip(w)


def _extra_payload(root: Path) -> None:
    (_rel(root) / "payload/model/extra.bin").write_bytes(b"\x00" * 16)


def _unit_line(root: Path) -> None:
    _edit(root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service", "NoNewPrivileges=yes", "NoNewPrivileges=no")


def _dropin(root: Path) -> None:
    d = root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service.d"
    d.mkdir()
    (d / "override.conf").write_text("[Service]\nUser=root\nCapabilityBoundingSet=CAP_SYS_ADMIN\nProtectSystem=no\n"
                                     "ProtectHome=no\nPrivateTmp=no\nNoNewPrivileges=no\n")


def _env_mode(root: Path) -> None:
    os.chmod(_rel(root) / "service-r0.env", 0o644)


def _usage_stats(root: Path) -> None:
    _edit(_rel(root) / "service-r0.env", "VLLM_NO_USAGE_STATS=1\n", "")


def _bind(root: Path) -> None:
    _edit(_rel(root) / "vllm-r0.yaml", "host: 127.0.0.1", "host: 0.0.0.0")


def _api_key(root: Path) -> None:
    _edit(_rel(root) / "service-r0.env", f"VLLM_API_KEY={_key(root)}", "VLLM_API_KEY=" + "x" * 43)


def _module(root: Path) -> None:
    (init,) = (_rel(root) / "venv/lib").glob("python*/site-packages/tinydep/__init__.py")
    init.write_text(init.read_text() + "import os  # planted\n")


def _pth(root: Path) -> None:
    (site,) = (_rel(root) / "venv/lib").glob("python*/site-packages")
    (site / "zz-persist.pth").write_text("import os\n")


def _extra_dist(root: Path) -> None:
    (site,) = (_rel(root) / "venv/lib").glob("python*/site-packages")
    (site / "smuggled-1.0.dist-info").mkdir()
    (site / "smuggled-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: smuggled\nVersion: 1.0\n")


def _listing_with_module(root: Path) -> None:
    """A module edited and the environment's listing rewritten to match it: only the seal still knows."""
    import hashlib

    (init,) = (_rel(root) / "venv/lib").glob("python*/site-packages/tinydep/__init__.py")
    init.write_text(init.read_text() + "import os  # planted\n")
    listing = _rel(root) / "venv-manifest.json"
    doc = json.loads(listing.read_text())
    rel = str(init.relative_to(_rel(root) / "venv"))
    assert rel in doc["files"]
    doc["files"][rel] = hashlib.sha256(init.read_bytes()).hexdigest()
    listing.write_text(json.dumps(doc, indent=0) + "\n")


def _python_with_unit(root: Path) -> None:
    """release.json names another interpreter, and the unit (installed and the release's copy) runs it."""
    python = json.loads((_rel(root) / "release.json").read_text())["python"]
    _edit(_rel(root) / "release.json", json.dumps(python), json.dumps("/tmp/evil/bin/python"))
    for unit in (_rel(root) / "unit-r0.service", root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service"):
        text = unit.read_text()
        assert python in text
        unit.write_text(text.replace(python, "/tmp/evil/bin/python"))


def _external_flag(root: Path) -> None:
    """release.json claims the site's environment: the venv and SBOM checks would look away."""
    _edit(_rel(root) / "release.json", '"external_env": false', '"external_env": true')


def _key_with_env(root: Path) -> None:
    """The API key file replaced, and r0's environment file and the router's credential rendered for the new key."""
    from gptossctl.install.router import router_key_map

    old = _key(root)
    (root / "etc/gptoss" / INSTANCE / "api-key").write_text("k" * 43 + "\n")
    _edit(_rel(root) / "service-r0.env", f"VLLM_API_KEY={old}", "VLLM_API_KEY=" + "k" * 43)
    (root / "etc/gptoss" / INSTANCE / "router-key.map").write_text(router_key_map("k" * 43))


def _audit_entry(root: Path) -> None:
    log = root / "var/log/gptoss/audit.jsonl"
    lines = log.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["user"] = "nobody"
    lines[0] = json.dumps(entry, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")


def _world_writable(root: Path) -> None:
    os.chmod(_rel(root) / "payload/model/config.json", 0o666)


def _license(root: Path) -> None:
    (_rel(root) / "payload/model/USAGE_POLICY").unlink()


def _key_mode(root: Path) -> None:
    os.chmod(root / "etc/gptoss" / INSTANCE / "api-key", 0o644)


TAMPER = {
    "weight file bit flip": (_weights, {"drift.payload"}),
    "file added to the model": (_extra_payload, {"drift.payload"}),
    "unit line edited": (_unit_line, {"config.unit"}),
    "drop-in loosening the sandbox": (_dropin, {"config.unit", "config.exposure"}),
    "env file made world-readable": (_env_mode, {"access.secrets"}),
    # The release's rendered copies are sealed in the audit chain at install: record.sealed names them too.
    "usage statistics turned on": (_usage_stats, {"config.usage_stats", "config.release_files", "record.sealed"}),
    "bound to every address": (_bind, {"config.bind", "config.release_files", "record.sealed"}),
    "API key replaced in the env file": (_api_key, {"access.api_key", "config.release_files", "record.sealed"}),
    "venv listing rewritten with the module": (_listing_with_module, {"record.sealed", "drift.environment"}),
    "release.json python rewritten with the unit": (_python_with_unit, {
        "record.sealed", "config.unit", "config.release_files", "drift.environment", "provenance.sbom"}),
    "release.json claims an external environment": (_external_flag, {
        "record.sealed", "config.unit", "config.release_files", "drift.environment", "provenance.sbom"}),
    "API key file replaced with the env file": (_key_with_env, {"record.sealed"}),
    "module edited in the environment": (_module, {"drift.environment"}),
    ".pth file planted in the environment": (_pth, {"drift.environment"}),
    "package smuggled into the environment": (_extra_dist, {"drift.environment", "provenance.sbom"}),
    "audit entry edited": (_audit_entry, {"audit.chain"}),
    "world-writable model file": (_world_writable, {"access.permissions"}),
    "USAGE_POLICY deleted": (_license, {"license.model", "drift.payload"}),
    "API key file made world-readable": (_key_mode, {"access.secrets"}),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_each_tampering_is_caught_by_its_check_and_nothing_else(cli, tree: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    tamper, expected = TAMPER[case]
    tamper(tree)
    code, doc = _check(cli, tree)
    assert code == 1
    assert _failed(doc) == expected, json.dumps([c for c in doc["data"]["checks"] if c["status"] != "pass"],
                                                indent=1)[:4000]
    for c in doc["data"]["checks"]:
        if c["id"] in expected:
            assert c["remediation"] and c["evidence"] and c["locations"], c
    # Every failure is also a finding with its remediation as the hint, and the key never shows.
    assert {f["code"] for f in doc["findings"]} == {f"compliance.{i}" for i in expected}
    assert all(f.get("hint") for f in doc["findings"])
    assert _key(tree) not in json.dumps(doc)


def test_the_evidence_names_what_changed(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    _weights(tree)
    _unit_line(tree)
    _api_key(tree)
    by = {c["id"]: c for c in _check(cli, tree)[1]["data"]["checks"]}
    assert any("model-00000-of-00001.safetensors" in e and "digest_mismatch" in e for e in by["drift.payload"]["evidence"])
    assert "-NoNewPrivileges=yes" in by["config.unit"]["evidence"] and "+NoNewPrivileges=no" in by["config.unit"]["evidence"]
    assert "service-r0.env: VLLM_API_KEY: approved (redacted), found (redacted)" in by["config.release_files"]["evidence"]
    assert by["drift.payload"]["remediation"].endswith("--repair")


def test_trust_expiry_and_outputs_of_a_failing_run(cli, tree: Path, keys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   sarif_multitool: Path) -> None:
    # An auditor's own key set: mallory did not sign this bundle.
    code, doc = _check(cli, tree, "--trust", str(keys["mallory"].public))
    assert code == 1 and _failed(doc) == {"bundle.signatures"}
    # The 90-day bundle is inside a 120-day warning: a warning, not a failure (exit 0).
    code, doc = _check(cli, tree, "--expiry-warning", "120d")
    assert code == 0 and _status(doc)["bundle.expiry"] == "warn"
    # A failing run in every format.
    _weights(tree)
    out = tmp_path / "out"
    out.mkdir()  # report paths must be in an existing directory (output.no_directory)
    code, doc = _check(cli, tree, "--sarif", str(out / "c.sarif"), "--junit", str(out / "c.xml"),
                       "--textfile", str(out / "c.prom"))
    assert code == 1
    import jsonschema

    sarif = json.loads((out / "c.sarif").read_text())
    jsonschema.Draft202012Validator(json.loads((sarif_multitool / "sarif-2.1.0.json").read_text())).validate(sarif)
    _multitool_validate(sarif_multitool, out / "c.sarif", tmp_path)
    failed = [r for r in sarif["runs"][0]["results"] if r["kind"] == "fail"]
    assert [(r["ruleId"], r["level"]) for r in failed] == [("drift.payload", "error")]
    assert failed[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("file:///opt/gptoss/")
    rule = sarif["runs"][0]["tool"]["driver"]["rules"][failed[0]["ruleIndex"]]
    assert rule["id"] == "drift.payload" and "NIST-800-53/SI-7" in rule["properties"]["tags"]
    from junitparser import Failure, JUnitXml

    cases = [c for s in JUnitXml.fromfile(str(out / "c.xml")) for c in s]
    failing = [c.name for c in cases if any(isinstance(r, Failure) for r in c.result)]
    assert failing == ["drift.payload: Every installed file matches the signed manifest (no change, loss or addition)"]
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("check")): s.value for f in text_string_to_metric_families((out / "c.prom").read_text())
               for s in f.samples}
    assert samples[("gptoss_compliance_ok", None)] == 0.0 and samples[("gptoss_compliance_failed_checks", None)] == 1.0
    assert samples[("gptoss_compliance_check_status", "drift.payload")] == 2.0


def test_repair_restores_a_drifted_release(cli, tree: Path, installed: Path, keys) -> None:  # type: ignore[no-untyped-def]
    bundle = installed.parent / "bundle"
    _weights(tree)
    _module(tree)
    _env_mode(tree)
    assert _failed(_check(cli, tree)[1]) == {"drift.payload", "drift.environment", "access.secrets"}
    key = _key(tree)
    code, doc = cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(tree), "--repair")
    assert code == 0, doc
    unpack = [s for s in doc["data"]["steps"] if s["step"] == "unpack"][0]
    assert "repaired" in unpack["detail"]
    code, doc = _check(cli, tree)
    assert code == 0, _failed(doc)
    assert _key(tree) == key  # the instance keeps its key
    assert not list((tree / "opt/gptoss" / INSTANCE / "releases").glob(".*"))  # the drifted copy is gone
    last = json.loads((tree / "var/log/gptoss/audit.jsonl").read_text().splitlines()[-1])
    assert "--repair" in last["command"] and last["result"] == "ok"  # the repair is on the record


def test_install_lays_down_the_daily_timer_and_uninstall_removes_it(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    units = tree / "etc/systemd/system"
    service = (units / "gptoss-compliance@.service").read_text()
    assert f"ExecStart={sys.executable} -m gptossctl compliance check --instance %i" in service
    assert "--textfile /var/lib/gptoss-compliance/%i.prom" in service and "{{" not in service
    assert "OnCalendar=daily" in (units / "gptoss-compliance@.timer").read_text()
    assert (units / f"timers.target.wants/gptoss-compliance@{INSTANCE}.timer").is_symlink()
    # The timer's service is graded like the server's: real systemd-analyze, offline.
    check = tree.parent / f"gptoss-compliance@{INSTANCE}.service"  # verified where its interpreter exists
    check.write_text(service)
    res = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "gptoss" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tree}",
                          f"gptoss-compliance@{INSTANCE}.service"], capture_output=True, text=True)
    import re

    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m and float(m.group(1)) <= 2.0, res.stdout[-1500:]
    code, doc = cli("uninstall", "--root", str(tree), "--instance", INSTANCE, "--purge")
    assert code == 0, doc
    assert not (units / f"timers.target.wants/gptoss-compliance@{INSTANCE}.timer").exists()
    assert not (units / "gptoss-compliance@.service").exists()


def test_support_bundle_redacts_every_secret(cli, tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = _key(tree)
    # A careless drop-in that echoes the key: it is collected (drop-ins matter to support) and redacted.
    d = tree / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service.d"
    d.mkdir()
    (d / "debug.conf").write_text(f"[Service]\nEnvironment=VLLM_API_KEY={key}\n# curl -H 'Authorization: Bearer {key}'\n")
    out = tmp_path / "support.tar.gz"
    code, doc = cli("support-bundle", "--root", str(tree), "--instance", INSTANCE, "--output", str(out))
    assert code == 0, doc
    assert out.stat().st_mode & 0o777 == 0o600
    raw = out.read_bytes()
    assert key.encode() not in raw
    with tarfile.open(out) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    for want in ("units/gptoss@tiny-gpt-oss-r0.service", "units/gptoss-router@tiny-gpt-oss.service",
                 "units/dropins/gptoss@tiny-gpt-oss-r0.service.d/debug.conf",
                 "release/vllm-r0.yaml", "release/service-r0.env", "release/router.conf", "release/release.json",
                 "release/packages.txt",
                 "compliance.json", "status.json", "hardware.json", "audit/audit.jsonl", "audit/verify.json",
                 "systemd-analyze-security.txt"):
        assert want in members, sorted(members)
    for name, data in members.items():
        assert key.encode() not in data, name
    assert b"VLLM_API_KEY=[REDACTED]" in members["release/service-r0.env"]
    assert b"HF_HUB_OFFLINE=1" in members["release/service-r0.env"]  # what is not secret stays readable
    assert b"Bearer [REDACTED]" in members["units/dropins/gptoss@tiny-gpt-oss-r0.service.d/debug.conf"]
    assert json.loads(members["compliance.json"])["instance"] == INSTANCE
    assert b"tinydep==1.2.0" in members["release/packages.txt"]
    assert doc["data"]["secrets_redacted"] >= 1
    # The collected tree was not changed by collecting it.
    assert (_rel(tree) / "service-r0.env").stat().st_mode & 0o777 == 0o600


def test_support_bundle_redacts_secrets_wherever_a_value_can_sit(cli, tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secrets = {"quoted": "q-Secr3t-value-1", "unquoted": "u-Secr3t-value-2", "lower": "l-Secr3t-value-3",
               "single": "s-Secr3t-value-4", "envfile": "e-Secr3t-value-5", "colon": "c-Secr3t-value-6"}
    d = tree / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service.d"
    d.mkdir()
    (d / "site.conf").write_text(
        "[Service]\n"
        f'Environment="HTTP_PROXY=http://proxy:3128" "SITE_TOKEN={secrets["quoted"]}"\n'
        f"Environment=DB_PASSWORD={secrets['unquoted']} OTHER=visible\n"
        f"Environment='my_api_key={secrets['single']}' api_secret={secrets['lower']}\n"
        "EnvironmentFile=-/etc/site/secrets.env\n"
        f"# config: credential: {secrets['colon']}\n")
    (tree / "etc/site").mkdir()
    (tree / "etc/site/secrets.env").write_text(f"Vault_Credential={secrets['envfile']}\n")
    out = tmp_path / "support.tar.gz"
    code, doc = cli("support-bundle", "--root", str(tree), "--instance", INSTANCE, "-o", str(out))
    assert code == 0, doc
    raw = out.read_bytes()
    with tarfile.open(out) as tar:
        plain = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    for name, value in secrets.items():
        assert value.encode() not in plain and value.encode() not in raw, name
    assert b"HTTP_PROXY=http://proxy:3128" in plain and b"OTHER=visible" in plain
    assert doc["data"]["secrets_redacted"] >= 5
    # An existing output is never overwritten without --force, and a link is never followed.
    code, doc = cli("support-bundle", "--root", str(tree), "--instance", INSTANCE, "-o", str(out))
    assert code == 2 and doc["error"]["code"] == "output.exists" and out.read_bytes() == raw
    link = tmp_path / "link.tar.gz"
    link.symlink_to(tmp_path / "victim")
    (tmp_path / "victim").write_text("keep\n")
    code, doc = cli("support-bundle", "--root", str(tree), "--instance", INSTANCE, "-o", str(link), "--force")
    assert code == 2 and doc["error"]["code"] == "output.is_link"
    assert (tmp_path / "victim").read_text() == "keep\n" and link.is_symlink()
    out.write_bytes(b"an older file")  # --force replaces it (the archive itself can be byte-identical to raw)
    code, doc = cli("support-bundle", "--root", str(tree), "--instance", INSTANCE, "-o", str(out), "--force")
    assert code == 0 and out.read_bytes().startswith(b"\x1f\x8b") and out.stat().st_mode & 0o777 == 0o600


def test_compliance_on_a_missing_instance_is_a_usage_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "opt/gptoss/other").mkdir(parents=True)
    code, doc = cli("compliance", "check", "--root", str(tmp_path), "--instance", "absent")
    assert code == 2 and doc["error"]["code"] == "compliance.not_installed"


# ---------------------------------------------------------------- what systemd applies, and who may write what
# Drop-ins from every directory of systemd's unit search path and every drop-in name systemd consults
# (systemd.unit(5)), on every unit gptossctl installs; a unit file of the same name earlier in the search path.

DROPINS = {
    "system.control": f"etc/systemd/system.control/gptoss@{INSTANCE}-r0.service.d/50-site.conf",
    "transient": f"run/systemd/transient/gptoss@{INSTANCE}-r0.service.d/50-site.conf",
    "usr/local template": "usr/local/lib/systemd/system/gptoss@.service.d/50-site.conf",
    "generator.late, type-wide": "run/systemd/generator.late/service.d/50-site.conf",
    "dash prefix (the compliance service)": "etc/systemd/system/gptoss-.service.d/50-site.conf",
    "the compliance timer": f"etc/systemd/system/gptoss-compliance@{INSTANCE}.timer.d/50-site.conf",
    "the compliance timer's template": "run/systemd/system/gptoss-compliance@.timer.d/50-site.conf",
}


@pytest.mark.parametrize("case", list(DROPINS))
def test_a_dropin_anywhere_systemd_reads_one_fails_the_unit_check(cli, tree: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    dropin = tree / DROPINS[case]
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Unit]\nDescription=site override\n")
    code, doc = _check(cli, tree)
    assert code == 1 and _failed(doc) == {"config.unit"}, _status(doc)
    by = {c["id"]: c for c in doc["data"]["checks"]}
    assert any(f"/{DROPINS[case]}" in e for e in by["config.unit"]["evidence"]), by["config.unit"]["evidence"]
    assert f"/{DROPINS[case]}" in by["config.unit"]["locations"]


def test_a_distributions_own_type_wide_dropin_is_a_warning_and_a_sites_fails(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    """Ubuntu 24.04 ships /usr/lib/systemd/system/service.d/10-timeout-abort.conf, applied to every service: shown
    and a warning on a clean host (it failed every such host before); the same file under /etc fails."""
    vendor = tree / "usr/lib/systemd/system/service.d/10-timeout-abort.conf"
    vendor.parent.mkdir(parents=True)
    vendor.write_text("[Service]\nTimeoutStopFailureMode=abort\n")
    code, doc = _check(cli, tree)
    by = {c["id"]: c for c in doc["data"]["checks"]}
    assert code == 0 and by["config.unit"]["status"] == "warn", _status(doc)
    assert any("/usr/lib/systemd/system/service.d/10-timeout-abort.conf" in e for e in by["config.unit"]["evidence"])
    site = tree / "etc/systemd/system/service.d/10-timeout-abort.conf"
    site.parent.mkdir(parents=True)
    site.write_text(vendor.read_text())
    code, doc = _check(cli, tree)
    assert code == 1 and _failed(doc) == {"config.unit"}, _status(doc)


SHADOWS = {  # the file that shadows ours -> ours
    f"run/systemd/system.control/gptoss@{INSTANCE}-r0.service": f"gptoss@{INSTANCE}-r0.service",
    f"etc/systemd/system.control/gptoss-compliance@{INSTANCE}.service": "gptoss-compliance@.service",
    "run/systemd/transient/gptoss-compliance@.timer": "gptoss-compliance@.timer",
    # later on the path, but an instance's own file wins over the template we install
    f"run/systemd/system/gptoss-compliance@{INSTANCE}.timer": "gptoss-compliance@.timer",
}


@pytest.mark.parametrize("shadow", list(SHADOWS))
def test_a_unit_file_that_shadows_ours_fails_the_unit_check(cli, tree: Path, shadow: str) -> None:  # type: ignore[no-untyped-def]
    ours = tree / "etc/systemd/system" / SHADOWS[shadow]
    (tree / shadow).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ours, tree / shadow)  # even the same text: systemd loads that file, not ours
    code, doc = _check(cli, tree)
    assert code == 1 and "config.unit" in _failed(doc), _status(doc)
    evidence = " ".join({c["id"]: c for c in doc["data"]["checks"]}["config.unit"]["evidence"])
    assert f"/{shadow}" in evidence and "not /etc/systemd/system/" in evidence, evidence


def test_an_edited_compliance_unit_fails_the_unit_check(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    _edit(tree / "etc/systemd/system/gptoss-compliance@.service", "compliance check --instance %i",
          "compliance check --instance default")
    code, doc = _check(cli, tree)
    assert code == 1 and _failed(doc) == {"config.unit"}, _status(doc)
    evidence = {c["id"]: c for c in doc["data"]["checks"]}["config.unit"]["evidence"]
    assert any("gptoss-compliance@.service differs" in e for e in evidence), evidence


def _other_owner(root: Path) -> None:
    os.chown(_rel(root) / "vllm-r0.yaml", 1000, 1000)


def _group_writable_dir(root: Path) -> None:
    os.chmod(_rel(root) / "payload", 0o775)


def _setuid(root: Path) -> None:
    os.chmod(_rel(root) / "payload/model/config.json", 0o4644)


def _setgid_dir(root: Path) -> None:
    os.chmod(_rel(root) / "payload/model", 0o2755)


def _group_writable_parent(root: Path) -> None:
    os.chmod(root / "opt", 0o775)


def _unit_dir_other_owner(root: Path) -> None:
    os.chown(root / "etc/systemd/system", 1000, 1000)


def _planted_link(root: Path) -> None:
    (root / "opt/gptoss" / INSTANCE / "releases" / "latest").symlink_to("5")


def _state_dir_code(root: Path) -> None:
    state = _state_dir(root)
    (state / "sitecustomize.py").write_text("import os\n")


def _state_dir_executable(root: Path) -> None:
    state = _state_dir(root)
    (state / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(state / "run.sh", 0o700)


def _state_dir(root: Path) -> Path:
    """The service's StateDirectory, as systemd makes it: 0700, owned by the service user."""
    uid = next(int(ln.split(":")[2]) for ln in (root / "etc/passwd").read_text().splitlines()
               if ln.startswith("gptoss:"))
    state = root / "var/lib/gptoss" / f"{INSTANCE}-r0"
    state.mkdir(parents=True, mode=0o700)
    (state / "usage.json").write_text("{}\n")
    for p in (state, state / "usage.json"):
        os.chown(p, uid, uid)
    return state


PERMISSIONS = {
    "file owned by uid 1000": (_other_owner, "owned by uid 1000"),
    "group-writable directory": (_group_writable_dir, "group-writable"),
    "setuid file": (_setuid, "setuid"),
    "setgid directory": (_setgid_dir, "setgid"),
    "group-writable parent (/opt)": (_group_writable_parent, "/opt is 0775"),
    "unit directory owned by uid 1000": (_unit_dir_other_owner, "/etc/systemd/system is 0755 owned by uid 1000"),
    "symbolic link gptossctl did not make": (_planted_link, "is a symbolic link"),
    "Python code in the state directory": (_state_dir_code, "sitecustomize.py"),
    "executable in the state directory": (_state_dir_executable, "run.sh"),
}


@pytest.mark.parametrize("case", list(PERMISSIONS))
def test_permissions_are_an_invariant_over_every_installed_path_and_its_parents(cli, tree: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    tamper, said = PERMISSIONS[case]
    tamper(tree)
    code, doc = _check(cli, tree)
    assert code == 1 and _failed(doc) == {"access.permissions"}, _status(doc)
    evidence = " ".join({c["id"]: c for c in doc["data"]["checks"]}["access.permissions"]["evidence"])
    assert said in evidence, evidence


def test_the_service_state_directory_owned_by_the_service_user_passes(cli, tree: Path) -> None:  # type: ignore[no-untyped-def]
    _state_dir(tree)
    code, doc = _check(cli, tree)
    assert code == 0 and set(_status(doc).values()) == {"pass"}, _status(doc)
    evidence = " ".join({c["id"]: c for c in doc["data"]["checks"]}["access.permissions"]["evidence"])
    assert f"/var/lib/gptoss/{INSTANCE}-r0" in evidence, evidence


def test_a_clock_behind_the_audit_chain_fails_expiry(tree: Path) -> None:
    """Red-team 24: "now" more than 5 minutes before the newest audit entry is a clock set back (an expired bundle
    would look valid): bundle.expiry fails with clock.behind_audit and a hint to fix the clock; a few minutes of
    difference pass."""
    from datetime import timedelta

    from gptossctl.compliance.checks import run_checks
    from gptossctl.compliance.evidence import ComplianceOptions
    from gptossctl.install import audit

    newest = audit.newest_time(audit.verify_root(tree).records)
    assert newest is not None
    report = run_checks(tree, INSTANCE, ComplianceOptions(now=newest - timedelta(days=1)))
    failed = {c.id: c for c in report.checks if c.status == "fail"}
    assert set(failed) == {"bundle.expiry"}, failed
    assert failed["bundle.expiry"].evidence[0].startswith("clock.behind_audit") and \
        "NTP" in failed["bundle.expiry"].evidence[1]
    report = run_checks(tree, INSTANCE, ComplianceOptions(now=newest - audit.CLOCK_SLACK / 2))
    assert not [c.id for c in report.checks if c.status == "fail"]
