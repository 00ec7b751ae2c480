"""The two scripts the rollout runs on a host before gptossctl exists there, on real bundles: the pull
from a site mirror (ansible/roles/gptoss_bundle/files/fetch-bundle.py, against a real web server on
loopback) and the OpenSSL check of what gptossctl is bootstrapped from (bootstrap-verify.sh)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptossctl.bundle.pack import pack_bundle
from gptossctl.bundle.spec import load_spec
from tests.conftest import KeyPair

pytestmark = pytest.mark.integration
FILES = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "gptoss_bundle" / "files"
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


def bootstrap_verify(bundle: Path, *pubs: Path) -> subprocess.CompletedProcess[str]:
    # Only what a fresh host has: sh, OpenSSL, coreutils.
    return subprocess.run(["sh", str(FILES / "bootstrap-verify.sh"), str(bundle), *map(str, pubs)],
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
    res = bootstrap_verify(wheeled, keys["mallory"].public, keys["alice"].public)
    assert res.returncode == 0 and res.stdout.startswith(f"OK: signed by {keys['alice'].keyid}"), res.stdout


@pytest.mark.parametrize("tamper, why", [
    ("untrusted", "no valid signature by a trusted key"),
    ("wheel", "a wheel does not match"),
    ("extra", "payload/wheels differs from the signed list"),
    ("sums", "SHA256SUMS is not the signed list"),
    ("manifest", "no valid signature by a trusted key"),
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
    res = bootstrap_verify(b, trusted)
    assert res.returncode != 0 and why in res.stdout, res.stdout + res.stderr
