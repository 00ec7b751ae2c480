"""`gptossctl install --dry-run` runs every check install runs before it changes anything (install/checklist.py):
on the same staged root, the dry run refuses what the install refuses, with the same code and exit code, and
reports every failure, not only the first. It takes parts and a delta too (rebuilt in a temporary folder,
never in the install tree, and removed)."""

# ruff: noqa: F811 - fixtures imported from carry_bundles come back as test parameters
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KeyPair, finding_codes, pack
from tests.integration.carry_bundles import (  # noqa: F401 - fixtures
    carry_model,
    carry_parts,
    carry_v5,
    carry_v6,
    console_script,
    env,
)

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
PY = str(Path(os.path.realpath(sys.executable)))  # python3.N: its name says its version


def _wheel(house: Path, filename: str) -> None:
    """A minimal wheel (METADATA only): what pack ships and install's wheel check reads by its tags."""
    house.mkdir(parents=True, exist_ok=True)
    dist = filename.split("-")[0] + "-" + filename.split("-")[1] + ".dist-info"
    with zipfile.ZipFile(house / filename, "w") as z:
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {filename.split('-')[0]}\n"
                                       f"Version: {filename.split('-')[1]}\nLicense: MIT\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


@pytest.fixture(scope="module")
def wheeled(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> Path:
    """The tiny bundle carrying one pure-Python wheel (installable on any Python 3, any machine)."""
    house = tmp_path_factory.mktemp("house")
    _wheel(house, "demo_pkg-1.0-py3-none-any.whl")
    return pack(tmp_path_factory.mktemp("wheeled") / "b", tiny_model, [keys["alice"]], version=5, wheelhouse=house)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> Path:
    """The tiny bundle carrying wheels built for another Python and another machine than this host's."""
    house = tmp_path_factory.mktemp("house2")
    _wheel(house, "demo_pkg-1.0-py3-none-any.whl")
    _wheel(house, "native_pkg-2.0-cp39-cp39-manylinux_2_28_s390x.whl")
    return pack(tmp_path_factory.mktemp("foreign") / "b", tiny_model, [keys["alice"]], version=5, wheelhouse=house)


def _state(root: Path) -> dict[str, str]:
    """Every path under the root with its content digest (or link target): what a dry run must leave as is."""
    out = {}
    for p in sorted(root.rglob("*")) if root.exists() else []:
        rel = str(p.relative_to(root))
        out[rel] = ("-> " + os.readlink(p) if p.is_symlink() else
                    hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
    return out


STAGED_PY = f"/usr/bin/{Path(PY).name}"  # python3.N, as the target names it


def _staged_python(root: Path) -> None:
    """/usr/bin/python3 in the staged tree, an absolute link to the tree's own python3.N (its version read from
    the name, its machine from the ELF header copied from this host's): read inside the tree, never the host's."""
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / STAGED_PY.lstrip("/")).write_bytes(Path(PY).read_bytes()[:64])
    (root / "usr/bin/python3").symlink_to(STAGED_PY)


def _base_install(cli: Any, bundle: Path, keys: dict[str, KeyPair], root: Path) -> None:
    code, doc = cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
                    "--vllm-python", sys.executable)
    assert code == 0, doc


# Each case: how to stage the root, the install's arguments, and the refusal install gives.
Setup = Callable[[Any, dict[str, Path], dict[str, KeyPair], Path], list[str]]


def _no_wheels(cli: Any, b: dict[str, Path], keys: dict[str, KeyPair], root: Path) -> list[str]:
    root.mkdir()
    _staged_python(root)
    return [str(b["plain"]), "--trust", str(keys["alice"].public)]  # no --vllm-python, and the bundle has no wheels


def _wrong_wheels(cli: Any, b: dict[str, Path], keys: dict[str, KeyPair], root: Path) -> list[str]:
    root.mkdir()
    _staged_python(root)
    return [str(b["foreign"]), "--trust", str(keys["alice"].public)]


def _no_python(cli: Any, b: dict[str, Path], keys: dict[str, KeyPair], root: Path) -> list[str]:
    root.mkdir()  # no usr/bin/python3 in the staged tree
    return [str(b["wheeled"]), "--trust", str(keys["alice"].public)]


def _port_taken(cli: Any, b: dict[str, Path], keys: dict[str, KeyPair], root: Path) -> list[str]:
    _base_install(cli, b["plain"], keys, root)  # tiny-gpt-oss: the router on 8000, r0 on 8001
    return [str(b["plain"]), "--instance", "second", "--port", "8001", "--trust", str(keys["alice"].public),
            "--vllm-python", sys.executable]


def _no_trust(cli: Any, b: dict[str, Path], keys: dict[str, KeyPair], root: Path) -> list[str]:
    root.mkdir()
    return [str(b["plain"]), "--vllm-python", sys.executable]  # a first install names no trust


CASES: dict[str, tuple[Setup, str, int]] = {
    "no-wheels": (_no_wheels, "install.no_wheels", 1),
    "wheels-for-another-host": (_wrong_wheels, "install.wheels_mismatch", 1),
    "no-interpreter": (_no_python, "install.no_python", 3),
    "port-taken": (_port_taken, "install.port_in_use", 1),
    "no-trust-root": (_no_trust, "verify.no_trusted_keys", 2),
}


@pytest.fixture(scope="module")
def bundles(packed: Path, wheeled: Path, foreign: Path) -> dict[str, Path]:
    return {"plain": packed, "wheeled": wheeled, "foreign": foreign}


@pytest.mark.parametrize("case", list(CASES))
def test_the_dry_run_refuses_what_install_refuses(cli, bundles: dict[str, Path], keys: dict[str, KeyPair],  # type: ignore[no-untyped-def]
                                                  tmp_path: Path, case: str) -> None:
    setup, want, exit_code = CASES[case]
    root = tmp_path / "root"
    args = setup(cli, bundles, keys, root) + ["--root", str(root)]
    before = _state(root)
    dry_code, dry = cli("install", *args, "--dry-run")
    assert (dry_code, dry["error"]["code"] if dry.get("error") else None) == (exit_code, want), dry
    assert _state(root) == before  # the dry run changed nothing
    code, doc = cli("install", *args)
    assert (code, doc["error"]["code"]) == (dry_code, dry["error"]["code"]), doc


def test_a_dry_run_reports_every_failure_with_the_code_install_stops_with(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    _base_install(cli, bundles["plain"], keys, root)
    # A second instance on r0's port, from a bundle without wheels, on a tree without the interpreter: three
    # refusals; install stops at the first (the wheels), the dry run names all three.
    args = [str(bundles["plain"]), "--instance", "second", "--port", "8001", "--trust", str(keys["alice"].public),
            "--root", str(root)]
    before = _state(root)
    dry_code, dry = cli("install", *args, "--dry-run")
    assert _state(root) == before
    code, doc = cli("install", *args)
    assert (code, doc["error"]["code"]) == (1, "install.no_wheels"), doc
    assert (dry_code, dry["error"]["code"]) == (code, doc["error"]["code"]), dry
    assert {"install.no_wheels", "install.no_python", "install.port_in_use"} <= set(finding_codes(dry)), dry
    failed = [s["step"] for s in dry["data"]["steps"] if s["status"] == "failed"]
    assert failed == ["wheels", "interpreter", "ports"], dry["data"]["steps"]


def test_not_enough_disk_is_refused_by_the_dry_run_as_by_install(cli, bundles, keys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    real = shutil.disk_usage
    size = sum(f["size"] for f in json.loads((bundles["plain"] / "manifest.json").read_text())["files"])

    def tiny(path: Any) -> Any:  # room for the bundle's bytes (the hardware check passes), not for the margin
        return real(path)._replace(free=size + (1 << 20)) if str(path).startswith(str(root)) else real(path)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    args = [str(bundles["plain"]), "--trust", str(keys["alice"].public), "--root", str(root),
            "--vllm-python", sys.executable]
    dry_code, dry = cli("install", *args, "--dry-run")
    assert (dry_code, dry["error"]["code"]) == (1, "install.insufficient_disk"), dry
    assert _state(root) == {}
    code, doc = cli("install", *args)
    assert (code, doc["error"]["code"]) == (dry_code, dry["error"]["code"]), doc


def test_a_dry_run_that_passes_says_what_it_checked(cli, bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    _staged_python(root)
    code, doc = cli("install", str(bundles["wheeled"]), "--trust", str(keys["alice"].public), "--root", str(root),
                    "--dry-run")
    assert code == 0, doc
    ok = {s["step"]: s["detail"] for s in doc["data"]["steps"] if s["status"] == "ok"}
    assert {"verify", "router", "preflight", "wheels", "interpreter", "ports", "disk"} <= set(ok), ok
    assert "1 wheel(s), each installable for Python 3." in ok["wheels"] and "8000, 8001" in ok["ports"], ok
    staged = _state(root)
    assert staged.pop("usr/bin/python3") == "-> " + STAGED_PY and set(staged) == {"usr", "usr/bin", STAGED_PY[1:]}


# ---- parts and deltas: rebuilt in a temporary folder, checked, removed


def _gptossctl(*args: str, tmpdir: Path) -> tuple[int, dict[str, Any]]:
    tmpdir.mkdir(exist_ok=True)
    res = subprocess.run([console_script(), *args, "--json"], capture_output=True, text=True,
                         env={**env(), "TMPDIR": str(tmpdir)}, timeout=300)
    return res.returncode, json.loads(res.stdout)


@pytest.fixture(scope="module")
def delta_dir(tmp_path_factory: pytest.TempPathFactory, carry_v5: Path, carry_v6: Path) -> Path:
    from gptossctl.bundle.delta import make_delta

    out = tmp_path_factory.mktemp("dry-delta") / "d"
    make_delta(carry_v5, carry_v6, out)
    return out


def test_a_dry_run_on_parts_passes_and_leaves_nothing_behind(carry_parts: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    code, doc = _gptossctl("install", str(carry_parts), "--trust", str(keys["alice"].public), "--root", str(root),
                           "--vllm-python", sys.executable, "--dry-run", tmpdir=tmp)
    assert code == 0, doc
    steps = {s["step"]: s for s in doc["data"]["steps"]}
    assert steps["materialize"]["status"] == "ok" and steps["verify"]["status"] == "ok", steps
    assert doc["data"]["dry_run"] is True and doc["data"]["version"] == 5
    assert _state(root) == {} and list(tmp.iterdir()) == []  # nothing in the tree, the temporary folder gone


def test_a_dry_run_on_a_delta_uses_the_installed_base_and_leaves_nothing_behind(
        cli, carry_v5: Path, delta_dir: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    _base_install(cli, carry_v5, keys, root)
    before = _state(root)
    code, doc = _gptossctl("install", str(delta_dir), "--root", str(root), "--vllm-python", sys.executable,
                           "--dry-run", tmpdir=tmp)
    assert code == 0, doc
    assert doc["data"]["version"] == 6 and doc["data"]["previous"] == 5
    assert "on the base" in {s["step"]: s for s in doc["data"]["steps"]}["materialize"]["detail"]
    assert _state(root) == before and list(tmp.iterdir()) == []
    # A fresh root has no base: --base names the bundle it was made against.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code, doc = _gptossctl("install", str(delta_dir), "--base", str(carry_v5), "--trust", str(keys["alice"].public),
                           "--root", str(fresh), "--vllm-python", sys.executable, "--dry-run", tmpdir=tmp)
    assert code == 0, doc
    assert _state(fresh) == {} and list(tmp.iterdir()) == []


def test_a_dry_run_on_a_delta_without_its_base_is_refused_and_cleans_up(delta_dir: Path, keys,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    code, doc = _gptossctl("install", str(delta_dir), "--trust", str(keys["alice"].public), "--root", str(root),
                           "--vllm-python", sys.executable, "--dry-run", tmpdir=tmp)
    assert (code, doc["error"]["code"]) == (2, "delta.base_missing"), doc
    assert _state(root) == {} and list(tmp.iterdir()) == []


def test_without_nginx_the_dry_run_stops_as_install_does_and_names_the_rest(bundles, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A host without nginx (its sbin hidden in a private mount namespace), and a bundle without wheels: install
    stops at the router (exit 3); the dry run gives that same code and exit, and names the wheels too."""
    root = tmp_path / "root"
    root.mkdir()
    _staged_python(root)
    cmd = (f"mount -t tmpfs tmpfs /usr/sbin && {console_script()} install {bundles['plain']} --trust "
           f"{keys['alice'].public} --root {root} --json")
    docs = []
    for extra in (" --dry-run", ""):
        res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd + extra],
                             capture_output=True, text=True, timeout=300)
        docs.append((res.returncode, json.loads(res.stdout)))
        if extra:
            staged = _state(root)
    assert staged.pop("usr/bin/python3") == "-> " + STAGED_PY and set(staged) == {"usr", "usr/bin", STAGED_PY[1:]}
    (dry_code, dry), (code, doc) = docs
    assert (code, doc["error"]["code"]) == (3, "install.no_router"), doc
    assert (dry_code, dry["error"]["code"]) == (code, doc["error"]["code"]), dry
    assert {"install.no_router", "install.no_wheels"} <= set(finding_codes(dry)), dry


def test_a_dry_run_without_room_in_tmpdir_is_refused_before_rebuilding(carry_parts: Path, keys,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    """The rebuilt bundle goes to TMPDIR: too little room there is exit 3 before anything is copied, with a
    hint naming TMPDIR and the bytes needed."""
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tmp)], check=True)
    try:
        code, doc = _gptossctl("install", str(carry_parts), "--trust", str(keys["alice"].public), "--root",
                               str(root), "--vllm-python", sys.executable, "--dry-run", tmpdir=tmp)
        assert code == 3 and doc["error"]["code"] == "install.dry_run_no_room", doc
        assert "TMPDIR" in doc["error"]["hint"] and str(tmp) in doc["error"]["message"], doc
        need = int(doc["error"]["message"].split(" bytes needed")[0].rsplit(" ", 1)[-1])
        assert need > sum(p.stat().st_size for p in carry_parts.iterdir()) and f"{need} bytes" in doc["error"]["hint"]
        assert _state(root) == {} and list(tmp.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(tmp)], check=True)


def test_a_killed_dry_runs_scratch_is_removed_by_the_next_dry_run(carry_parts: Path, keys,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    """A SIGKILL'd dry run leaves its rebuilt copy in TMPDIR: named gptossctl-dry-run-<pid>-*, it is removed by
    the next dry run when that process is gone and the folder is older than this run and owned by this user;
    a live process's folder and any other name are left alone."""
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp / f"gptossctl-dry-run-{gone.pid}-k1ll3d"
    live = tmp / f"gptossctl-dry-run-{os.getpid()}-running"
    other = tmp / "gptossctl-dry-run-notes"
    for d in (stale, live, other):
        (d / "carry-5").mkdir(parents=True)
        (d / "carry-5" / "payload.bin").write_bytes(b"x" * 4096)
        os.utime(d, (1_700_000_000, 1_700_000_000))
    code, doc = _gptossctl("install", str(carry_parts), "--trust", str(keys["alice"].public), "--root", str(root),
                           "--vllm-python", sys.executable, "--dry-run", tmpdir=tmp)
    assert code == 0, doc
    assert "gptossctl-dry-run-" in {s["step"]: s for s in doc["data"]["steps"]}["materialize"]["detail"]
    assert sorted(p.name for p in tmp.iterdir()) == sorted([live.name, other.name])
