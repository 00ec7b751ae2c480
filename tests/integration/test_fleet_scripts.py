"""The two scripts the rollout runs on a host before gptossctl exists there, on real bundles: the pull
from a site mirror (ansible/roles/gptoss_bundle/files/fetch-bundle.py, against a real web server on
loopback) and the OpenSSL check of what gptossctl is bootstrapped from (bootstrap-verify.sh), whose k-of-n
verdict must agree with docs/audit-verify.sh and with `gptossctl bundle verify --threshold` (a table)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gptossctl.bundle.sign import cosign_bundle
from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import KeyPair

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "ansible" / "roles" / "gptoss_bundle" / "files"
AUDIT = REPO / "docs" / "audit-verify.sh"
BIN = Path(sys.executable).parent
RECIPE = """schema: gptossctl.bundle-spec/1
name: wheeled
description: a tiny bundle with a wheelhouse
expires_in: 30d
model:
  name: gptossctl/tiny-gpt-oss
  repo: gptossctl/tiny-gpt-oss
  revision: test
wheels:
  dir: {wheels}
profiles: [cpu-tiny]
units: [gptoss@.service]
"""


@pytest.fixture(scope="module")
def wheeled(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, wheelhouse: Path,
            keys: dict[str, KeyPair]) -> Path:
    work = tmp_path_factory.mktemp("wheeled")
    (work / "recipe.yaml").write_text(RECIPE.format(wheels=wheelhouse))
    spec, spec_dir = load_spec(work / "recipe.yaml")
    out = work / "mirror" / "wheeled"
    pack_bundle(spec, spec_dir, out, [keys["alice"].signer()], model_dir=tiny_model, version=3)
    assert len(list((out / "payload" / "wheels").glob("*.whl"))) >= 4
    return out


@pytest.fixture()
def mirror(wheeled: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A web server on loopback serving a copy of the bundle: (its URL, the copy it serves)."""
    root = tmp_path / "www"
    shutil.copytree(wheeled, root / "wheeled")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            subprocess.run(["sleep", "0.1"], check=True)
        yield f"http://127.0.0.1:{port}/wheeled", root / "wheeled"
    finally:
        server.terminate()
        server.wait(10)


def fetch(url: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FILES / "fetch-bundle.py"), url, str(dest)], capture_output=True,
                          text=True, timeout=120, check=False)


def bootstrap_verify(bundle: Path, threshold: int, *pubs: Path) -> subprocess.CompletedProcess[str]:
    # Only what a fresh host has: sh, OpenSSL, coreutils.
    return subprocess.run(["sh", str(FILES / "bootstrap-verify.sh"), str(bundle), str(threshold), *map(str, pubs)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, check=False)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _sums(bundle: Path) -> dict[str, str]:
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in bundle.rglob("*") if p.is_file()}


def test_pull_copies_every_file_and_resumes_only_what_is_missing_or_wrong(mirror: tuple[str, Path],
                                                                           tmp_path: Path) -> None:
    url, served = mirror
    dest = tmp_path / "host" / "wheeled"
    first = fetch(url, dest)
    assert first.returncode == 0, first.stderr
    assert _sums(dest) == _sums(served)
    n = len(_sums(served)) - 3  # payload files; the manifest, envelope and SHA256SUMS are always fetched
    assert f'"fetched": {n}, "kept": 0' in first.stdout
    _flip(next((dest / "payload" / "wheels").glob("*.whl")))
    (dest / "payload" / "model" / "config.json").unlink()
    again = fetch(url, dest)
    assert again.returncode == 0 and f'"fetched": 2, "kept": {n - 2}' in again.stdout
    assert _sums(dest) == _sums(served)


def test_pull_refuses_a_file_the_mirror_changed(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, served = mirror
    _flip(next((served / "payload" / "wheels").glob("*.whl")))
    res = fetch(url, tmp_path / "host" / "wheeled")
    assert res.returncode != 0 and "does not match SHA256SUMS" in res.stderr


def test_pull_refuses_a_path_that_leaves_the_bundle(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, served = mirror
    sums = served / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{'0' * 64}  payload/../../etc/cron.d/x\n")
    res = fetch(url, tmp_path / "host" / "wheeled")
    assert res.returncode != 0 and "unsafe path" in res.stderr
    assert not (tmp_path / "etc").exists()


def test_bootstrap_check_accepts_the_signed_bundle(wheeled: Path, keys: dict[str, KeyPair]) -> None:
    res = bootstrap_verify(wheeled, 1, keys["mallory"].public, keys["alice"].public)
    last = res.stdout.splitlines()[-1]
    assert res.returncode == 0 and last.startswith(f"OK: signed by {keys['alice'].keyid} (alice.pub)"), res.stdout


# The messages changed with the k-of-n check (it names each key's verdict): "untrusted" and "manifest" now
# say how many given keys signed, and which given key's signature does not match.
@pytest.mark.parametrize("tamper, why", [
    ("untrusted", "0 of the given keys signed, 1 required"),
    ("wheel", "a wheel does not match"),
    ("extra", "payload/wheels differs from the signed list"),
    ("sums", "SHA256SUMS is not the signed list"),
    ("manifest", "signature does not match manifest.json"),
])
def test_bootstrap_check_refuses_what_gptossctl_must_not_be_installed_from(
        wheeled: Path, keys: dict[str, KeyPair], tmp_path: Path, tamper: str, why: str) -> None:
    b = tmp_path / "b"
    shutil.copytree(wheeled, b)
    wheel = next((b / "payload" / "wheels").glob("*.whl"))
    trusted = keys["mallory"].public if tamper == "untrusted" else keys["alice"].public
    if tamper == "wheel":
        _flip(wheel)
    elif tamper == "extra":
        shutil.copy(wheel, b / "payload" / "wheels" / "evil-1.0-py3-none-any.whl")
    elif tamper == "sums":  # a mirror that rewrote the list to match its own wheel
        _flip(wheel)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines = [(f"{digest}  payload/wheels/{wheel.name}" if ln.endswith(f"payload/wheels/{wheel.name}") else ln)
                 for ln in (b / "SHA256SUMS").read_text().splitlines()]
        (b / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    elif tamper == "manifest":
        m = b / "manifest.json"
        m.write_text(m.read_text().replace('"version": 3', '"version": 4'))
    res = bootstrap_verify(b, 1, trusted)
    assert res.returncode == 1 and why in res.stdout, res.stdout + res.stderr


def test_bootstrap_check_is_the_auditors_signature_check_word_for_word() -> None:
    # One rule in two self-contained scripts (the role's script travels alone to the host): the block is
    # kept in docs/audit-verify.sh and copied by scripts/sync-kofn-shell.sh; a hand edit of either fails here.
    def block(path: Path) -> str:
        text = path.read_text()
        begin, end = text.index("# ---- BEGIN kofn signature check"), text.index("# ---- END kofn signature check")
        return text[begin:end]

    assert "kofn_signatures" in block(AUDIT)
    assert block(FILES / "bootstrap-verify.sh") == block(AUDIT)
    check = subprocess.run(["sh", str(REPO / "scripts" / "sync-kofn-shell.sh"), "--check"], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_bootstrap_check_refuses_a_threshold_above_the_distinct_keys(wheeled: Path, keys: dict[str, KeyPair],
                                                                       tmp_path: Path) -> None:
    twin = tmp_path / "alice-again.pub"
    shutil.copy(keys["alice"].public, twin)
    for args in ((3, keys["alice"].public, keys["bob"].public), (2, keys["alice"].public, twin), (0, twin)):
        res = bootstrap_verify(wheeled, *args)  # type: ignore[arg-type]
        assert res.returncode == 2 and "threshold" in res.stderr and not res.stdout, (args, res.stdout, res.stderr)


# ---------------------------------------------------------------- k of n: three verifiers, one verdict
# Trust {alice, bob}. mallory is a key nobody gave: her signature is ignored, never counted. A given key's
# signature that does not verify is tampering: it fails whatever the other signatures say.
@pytest.fixture(scope="module")
def signed(wheeled: Path, keys: dict[str, KeyPair], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("signed")
    out = {"alice": wheeled}
    for name, cosigner in (("alice+bob", "bob"), ("alice+mallory", "mallory")):
        out[name] = work / name
        shutil.copytree(wheeled, out[name])
        cosign_bundle(out[name], keys[cosigner].signer())
    out["alice+bob(corrupt)"] = work / "corrupt"
    shutil.copytree(out["alice+bob"], out["alice+bob(corrupt)"])
    env_path = out["alice+bob(corrupt)"] / "manifest.dsse.json"
    env = json.loads(env_path.read_text())
    for sig in env["signatures"]:
        if sig["keyid"] == keys["bob"].keyid:
            raw = bytearray(base64.b64decode(sig["sig"]))
            raw[10] ^= 0x01
            sig["sig"] = base64.b64encode(bytes(raw)).decode()
    env_path.write_text(json.dumps(env, indent=1) + "\n")
    return out


AGREEMENT = [  # (signed by, threshold, the signers counted when it passes, or the reasons it fails)
    ("alice", 1, {"alice"}, set()),
    ("alice", 2, set(), {"threshold"}),
    ("alice+bob", 1, {"alice", "bob"}, set()),
    ("alice+bob", 2, {"alice", "bob"}, set()),
    # gptossctl refuses any unknown signer until the trust-root branch lands (then it ignores it too).
    ("alice+mallory", 1, {"alice"}, set()),
    ("alice+mallory", 2, set(), {"threshold"}),
    ("alice+bob(corrupt)", 1, set(), {"invalid"}),
    ("alice+bob(corrupt)", 2, set(), {"invalid", "threshold"}),
]


def _verdict(verifier: str, bundle: Path, threshold: int, keys: dict[str, KeyPair]
             ) -> tuple[int, set[str], set[str], str]:
    """(exit code, names of the keys counted, failure reasons, output) from one verifier."""
    names = {k.keyid: n for n, k in keys.items()}
    trust = [keys["alice"].public, keys["bob"].public]
    if verifier == "gptossctl":
        res = subprocess.run([str(BIN / "gptossctl"), "bundle", "verify", str(bundle), "--threshold", str(threshold),
                              *(f"--trust={k}" for k in trust), "--json"], capture_output=True, text=True, check=False)
        doc = json.loads(res.stdout)
        codes = {f["code"] for f in doc.get("findings", [])}
        reasons = {r for c, r in (("signature.invalid", "invalid"), ("signature.threshold_not_met", "threshold"))
                   if c in codes}
        counted = {names[k] for k in doc["data"].get("signers", [])} if res.returncode == 0 else set()
        return res.returncode, counted, reasons, res.stdout
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    argv = (["sh", str(AUDIT), str(bundle), "--threshold", str(threshold)] if verifier == "audit-verify.sh"
            else ["sh", str(FILES / "bootstrap-verify.sh"), str(bundle), str(threshold)])
    res = subprocess.run([*argv, *map(str, trust)], capture_output=True, text=True, env=env, check=False)
    counted = {names[line.split()[3]] for line in res.stdout.splitlines() if line.startswith("signed by key ")}
    reasons = set()
    if "FAIL: signature does not match manifest.json" in res.stdout:
        reasons.add("invalid")
    if f"{threshold} required (threshold)" in res.stdout:
        reasons.add("threshold")
    return res.returncode, counted if res.returncode == 0 else set(), reasons, res.stdout + res.stderr


@pytest.mark.parametrize("verifier", ["audit-verify.sh", "bootstrap-verify.sh", "gptossctl"])
@pytest.mark.parametrize("signers, threshold, counted, reasons", AGREEMENT,
                         ids=[f"{s}-at-{t}" for s, t, _, _ in AGREEMENT])
def test_every_verifier_gives_the_same_k_of_n_verdict(signed: dict[str, Path], keys: dict[str, KeyPair],
                                                      verifier: str, signers: str, threshold: int,
                                                      counted: set[str], reasons: set[str]) -> None:
    rc, got_counted, got_reasons, out = _verdict(verifier, signed[signers], threshold, keys)
    assert (rc, got_counted, got_reasons) == (0 if not reasons else 1, counted, reasons), out
    if verifier != "gptossctl" and "mallory" in signers:
        assert f"unknown signer {keys['mallory'].keyid}: not one of the given keys, ignored" in out


# ---------------------------------------------------------------- the playbook's ordering and rescue logic
# A unit test of the orchestration alone: ansible-playbook runs rollout.yml against hosts on this machine
# (connection local) whose gptossctl is a stand-in that keeps a release number in a file and fails where
# told. The bundle and the OpenSSL check are real. The real gptossctl on real hosts: test_fleet_ansible.py.
FAKE_CLI = r'''#!{python}
import json, pathlib, sys, time
here = pathlib.Path(__file__).resolve().parents[1]
state = json.loads((here / "state.json").read_text())
args = sys.argv[1:]
state["calls"].append([time.time(), args[0] if args[0] not in ("bundle", "hw", "compliance") else " ".join(args[:2])])
def done(code, data=None, error=None):
    (here / "state.json").write_text(json.dumps(state))
    doc = {{"schema": "gptossctl.result/1", "exit_code": code, "status": "ok" if code == 0 else "failed",
            "data": data or {{}}}}
    if error:
        doc["error"] = {{"code": "fake", "message": error, "hint": None}}
    print(json.dumps(doc))
    sys.exit(code)
def opt(name):
    return args[args.index(name) + 1]
if args[:2] == ["bundle", "verify"]:
    done(0, {{"version": state["bundle"]}})
if args[0] == "status":
    done(0, {{"instances": [{{"version": state["current"]}}]}})
if args[:2] == ["hw", "check"]:
    done(0, {{"layout": {{"replicas": 1}}, "models": []}})
if args[0] == "install":
    if state["fail"] == "install":
        done(1, error="release did not come up; previous release restored")
    state["current"] = state["bundle"]
    done(0, {{"version": state["bundle"], "changed": True}})
if args[0] == "smoke":
    pathlib.Path(opt("--junit")).write_text("<testsuites/>")
    done(1 if state["fail"] == "smoke" else 0)
if args[:2] == ["compliance", "check"]:
    for flag in ("--report", "--sarif", "--junit"):
        pathlib.Path(opt(flag)).write_text("{{}}")
    done(0)
if args[0] == "rollback":
    state["current"] = int(opt("--to"))
    done(0, {{"version": state["current"]}})
if args[0] == "uninstall":
    state["current"] = None
    done(0)
done(70, error="unexpected command " + " ".join(args))
'''


def _logic_run(tmp_path: Path, bundle: Path, trust: Path, hosts: dict[str, dict[str, object]],
               batch: int = 2) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    import os

    inv: dict[str, dict[str, object]] = {}
    for name, start in hosts.items():
        home = tmp_path / name
        (home / "bin").mkdir(parents=True)
        cli = home / "bin" / "gptossctl"
        cli.write_text(FAKE_CLI.format(python=sys.executable))
        cli.chmod(0o755)
        (home / "state.json").write_text(json.dumps({"bundle": 3, "calls": [], **start}))
        inv[name] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                     "gptoss_cli_prefix": str(home), "gptoss_trust_dir": str(home / "trust"),
                     "gptoss_host_reports_dir": str(home / "reports"), "gptoss_bundle_remote_dir": str(home / "b")}
    (tmp_path / "inv.json").write_text(json.dumps({"gptoss": {"hosts": inv}}))
    (tmp_path / "vars.json").write_text(json.dumps({
        "gptoss_bundle_transfer": "staged", "gptoss_bundle_staged_path": str(bundle), "gptoss_trust": [str(trust)],
        "gptoss_instance": "tiny", "gptoss_batch": batch, "gptoss_bootstrap": False, "gptoss_become": False,
        "gptoss_reports_dir": str(tmp_path / "controller")}))
    repo = FILES.parents[3]
    bindir = Path(sys.executable).parent
    res = subprocess.run([str(bindir / "ansible-playbook"), "-i", str(tmp_path / "inv.json"), "rollout.yml", "-e",
                          f"@{tmp_path / 'vars.json'}"], cwd=repo / "ansible", capture_output=True, text=True,
                         timeout=600, check=False,
                         env={**os.environ, "ANSIBLE_CONFIG": str(repo / "ansible" / "ansible.cfg"),
                              "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
                              "PATH": f"{bindir}:{os.environ['PATH']}"})
    states = {name: json.loads((tmp_path / name / "state.json").read_text()) for name in hosts}
    return res, states


def _commands(state: dict[str, object]) -> list[str]:
    return [c[1] for c in state["calls"]]  # type: ignore[attr-defined]


@pytest.mark.heavy  # a real ansible-playbook run over four hosts (about a minute)
def test_playbook_rolls_out_canary_first_then_batches(wheeled: Path, keys: dict[str, KeyPair],
                                                      tmp_path: Path) -> None:
    res, states = _logic_run(tmp_path, wheeled, keys["alice"].public,
                             {f"h{i}": {"current": 2, "fail": None} for i in range(4)})
    assert res.returncode == 0, res.stdout[-4000:]
    assert {n: s["current"] for n, s in states.items()} == {f"h{i}": 3 for i in range(4)}
    assert _commands(states["h0"]) == ["bundle verify", "status", "hw check", "install", "smoke", "compliance check"]
    first = {n: s["calls"][0][0] for n, s in states.items()}  # type: ignore[index]
    last = {n: s["calls"][-1][0] for n, s in states.items()}  # type: ignore[index]
    assert last["h0"] < min(first["h1"], first["h2"]) and max(last["h1"], last["h2"]) < first["h3"]  # [1, 2, 1]
    for name in states:
        assert {p.name for p in (tmp_path / "controller" / name).iterdir()} == {
            "bundle-verify.json", "hw-check.json", "install.json", "smoke.json", "smoke.junit.xml",
            "compliance.json", "compliance.sarif", "compliance.junit.xml"}


@pytest.mark.heavy  # a real ansible-playbook run over four hosts (about a minute)
def test_a_failed_smoke_test_puts_the_host_back_and_stops_before_the_next_batch(
        wheeled: Path, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    res, states = _logic_run(tmp_path, wheeled, keys["alice"].public, {
        "h0": {"current": 2, "fail": None}, "h1": {"current": 2, "fail": "smoke"},
        "h2": {"current": 2, "fail": None}, "h3": {"current": 2, "fail": None}})
    assert res.returncode != 0 and "No further host is touched" in res.stdout
    assert _commands(states["h1"])[-3:] == ["compliance check", "status", "rollback"]
    assert states["h1"]["current"] == 2  # put back by the play's rescue
    assert states["h2"]["current"] == 3 and "rollback" not in _commands(states["h2"])  # its batch finished
    assert states["h3"]["calls"] == [] and not (tmp_path / "controller" / "h3").exists()  # never touched
    assert (tmp_path / "controller" / "h1" / "rollback.json").is_file()


@pytest.mark.heavy
@pytest.mark.parametrize("fail, expect", [("install", []), ("smoke", ["uninstall"])])
def test_a_failed_first_install_on_the_canary_leaves_nothing_and_touches_no_other_host(
        wheeled: Path, keys: dict[str, KeyPair], tmp_path: Path, fail: str, expect: list[str]) -> None:
    res, states = _logic_run(tmp_path, wheeled, keys["alice"].public, {
        "h0": {"current": None, "fail": fail}, "h1": {"current": None, "fail": None}})
    assert res.returncode != 0
    assert states["h0"]["current"] is None
    assert [c for c in _commands(states["h0"]) if c in ("rollback", "uninstall")] == expect
    assert states["h1"]["calls"] == []


def test_nothing_from_the_bundle_runs_before_the_k_of_n_gate() -> None:
    # The role's task order, read from the role itself: before the OpenSSL gate only folders are made and
    # files copied (the keys, the bundle; the pull runs the role's own fetch-bundle.py); the gate gets the
    # threshold the later gptossctl step uses; the bootstrap (the bundle's uv and gptossctl) comes after.
    tasks = yaml.safe_load((FILES.parent / "tasks" / "main.yml").read_text())
    modules = [next(k for k in t if k.startswith("ansible.builtin.")) for t in tasks]
    gate = next(i for i, t in enumerate(tasks) if "bootstrap-verify.sh" in str(t.get("ansible.builtin.script", "")))
    before = set(modules[:gate])
    assert before <= {"ansible.builtin.set_fact", "ansible.builtin.file", "ansible.builtin.copy",
                      "ansible.builtin.script"}, before
    assert all("fetch-bundle.py" in str(t["ansible.builtin.script"]) for t in tasks[:gate]
               if "ansible.builtin.script" in t)
    assert "gptoss_rollout.threshold" in tasks[gate]["ansible.builtin.script"]["cmd"]
    bootstrap = next(i for i, t in enumerate(tasks) if "/usr/local/bin/uv" in str(t))
    verify = next(i for i, t in enumerate(tasks) if "'verify'" in str(t))
    assert gate < bootstrap < verify
    assert "gptoss_rollout.threshold" in str(tasks[verify])
