"""What runs beside the unit (red-team findings 08-13, 23, 33), through the installed console script: the
interpreters the units run, the service manager's environment, links where rendered files stand, POSIX ACLs,
the service's user site and its kernel caches. Refusals go through the hostile harness (exit code, error code,
one document, nothing changed); compliance failures name the check and what it found.
"""

# ruff: noqa: F811 - `world` is the fixture imported from test_hostile_inputs, taken as a parameter
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gptossctl.install.activate import wipe_kernel_caches
from gptossctl.install.layout import Layout
from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    C,
    Case,
    World,
    _rolled_forward,
    _root_copy,
    _run,
    world,
)
from tests.hostile.test_hostile_inputs import test_hostile_input_is_refused_cleanly as _refused_cleanly

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
RELEASE = f"opt/gptoss/{INSTANCE}/releases/5"
P = ("{pub}",)


def _writable_venv(w: World, tmp: Path) -> dict[str, str]:
    """A venv someone else could change: its lib tree group- and world-writable."""
    venv = tmp / "mlvenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    for d, dirs, _files in os.walk(venv / "lib"):
        os.chmod(d, 0o777)
        for name in dirs:
            os.chmod(Path(d) / name, 0o777)
    return {"mlpy": str(venv / "bin" / "python"), "fresh": str(tmp / "fresh"), "fresh_opt": str(tmp / "fresh" / "opt")}


def _link_in_place(rel: str) -> Callable[[Path], None]:
    """The rendered file replaced by a link to an identical, world-writable copy."""
    def change(release: Path) -> None:
        f = release / rel
        copy = release.parent.parent.parent.parent.parent / "pub" / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(f.read_bytes())
        copy.chmod(0o666)
        f.unlink()
        f.symlink_to(copy)
    return change


CASES: list[Case] = [
    # 23: --vllm-python in a venv others can write
    C("install-vllm-python-writable", "install", "{bundle}", "--trust", *P, "--root", "{fresh}", "--vllm-python",
      "{mlpy}", expect=1, watch=("fresh_opt",), setup=_writable_venv, code="install.interpreter_writable"),
    # 10, 11: rollback reads nothing through a link where a rendered file stands
    C("rollback-to-linked-config", "rollback", "--root", "{root2}", "--yes", expect=1, watch=("root2",),
      setup=_rolled_forward(_link_in_place("vllm-r0.yaml")), code="rollback.drift"),
    C("rollback-to-linked-unit-copy", "rollback", "--root", "{root2}", "--yes", expect=1, watch=("root2",),
      setup=_rolled_forward(_link_in_place("unit-r0.service")), code="rollback.drift"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_host_hostile_input_is_refused_cleanly(case: Case, world: World, tmp_path: Path) -> None:
    _refused_cleanly(case, world, tmp_path)


def _compliance(root: Path) -> tuple[int, dict[str, Any]]:
    r = _run(["compliance", "check", "--root", str(root)], {})
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout)


def _checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in doc["data"]["checks"]}


def test_the_clean_world_passes_with_the_manager_and_interpreters_checked(world: World, tmp_path: Path) -> None:
    root = _root_copy(world, tmp_path)
    (root / "etc/systemd/system.conf.d").mkdir(parents=True)
    (root / "etc/systemd/system.conf.d/10-locale.conf").write_text(
        '[Manager]\nDefaultEnvironment="LANG=C.UTF-8" "PATH=/usr/local/bin:/usr/bin:/bin"\n')
    rc, doc = _compliance(root)
    checks = _checks(doc)
    assert rc == 0, {k: v for k, v in checks.items() if v["status"] == "fail"}
    assert any("DefaultEnvironment" in e for e in checks["config.unit"]["evidence"])


def test_user_site_and_cwd_are_off_in_the_service_env_and_their_loss_fails(world: World, tmp_path: Path) -> None:
    """08: PYTHONNOUSERSITE=1 and PYTHONSAFEPATH=1 are rendered; removing them fails config.release_files."""
    root = _root_copy(world, tmp_path)
    env = root / RELEASE / "service-r0.env"
    lines = env.read_text().splitlines(keepends=True)
    assert "PYTHONNOUSERSITE=1\n" in lines and "PYTHONSAFEPATH=1\n" in lines
    env.write_text("".join(ln for ln in lines if not ln.startswith("PYTHONNOUSERSITE=")))
    rc, doc = _compliance(root)
    check = _checks(doc)["config.release_files"]
    assert rc == 1 and check["status"] == "fail" and any("PYTHONNOUSERSITE" in e for e in check["evidence"])


@pytest.mark.parametrize("where", ["etc/systemd/system.conf.d/zz.conf", "usr/lib/systemd/system.conf.d/zz.conf",
                                   "run/systemd/system.conf.d/zz.conf", "etc/systemd/system.conf"])
def test_manager_default_environment_reaching_the_unit_fails(world: World, tmp_path: Path, where: str) -> None:
    """12: DefaultEnvironment=LD_PRELOAD/PYTHONPATH in the manager's configuration fails config.unit, naming it."""
    root = _root_copy(world, tmp_path)
    f = root / where
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text('[Manager]\nDefaultEnvironment="LD_PRELOAD=/var/tmp/.x.so" "PYTHONPATH=/var/tmp/.x"\n')
    rc, doc = _compliance(root)
    check = _checks(doc)["config.unit"]
    assert rc == 1 and check["status"] == "fail", check
    text = "\n".join(check["evidence"])
    assert f"/{where}" in text and "LD_PRELOAD" in text and "PYTHONPATH" in text
    assert "/var/tmp/.x" not in text  # names, not values


def _acl(uid: int, *, default: bool = False, mask: int = 6) -> Callable[[Path], None]:
    ent = lambda tag, perm, i=0xFFFFFFFF: struct.pack("<HHI", tag, perm, i)  # noqa: E731
    raw = struct.pack("<I", 2) + ent(1, 6) + ent(2, 6, uid) + ent(4, 4) + ent(0x10, mask) + ent(0x20, 4)

    def put(p: Path) -> None:
        try:
            os.setxattr(p, "system.posix_acl_default" if default else "system.posix_acl_access", raw)
        except OSError as exc:
            pytest.skip(f"this filesystem takes no POSIX ACLs: {exc}")
    return put


@pytest.mark.parametrize(("rel", "default", "mask"), [
    ("payload/model/model-00000-of-00001.safetensors", False, 6),
    ("payload/model/model-00000-of-00001.safetensors", False, 4),  # masked today, live after a chmod g+w
    ("payload/model", True, 6),  # every new file under it would inherit the grant
])
def test_a_posix_acl_granting_write_fails_permissions(world: World, tmp_path: Path, rel: str, default: bool,
                                                      mask: int) -> None:
    """13: an ACL user:999:rw (the service user's kind of uid) on the signed weights or their directory."""
    root = _root_copy(world, tmp_path)
    target = root / RELEASE / rel
    _acl(999, default=default, mask=mask)(target)
    rc, doc = _compliance(root)
    check = _checks(doc)["access.permissions"]
    assert rc == 1 and check["status"] == "fail", check
    assert any(rel in e and "ACL lets user 999 write" in e for e in check["evidence"]), check["evidence"]


@pytest.mark.parametrize("rel", [f"etc/systemd/system/gptoss@{INSTANCE}-r0.service", f"{RELEASE}/vllm-r0.yaml",
                                 f"{RELEASE}/service-r0.env", f"{RELEASE}/unit-r0.service"])
def test_a_link_where_a_unit_or_rendered_file_stands_fails(world: World, tmp_path: Path, rel: str) -> None:
    """10, 11: a link to an identical 0666 copy: the link is named, and nothing is read through it."""
    root = _root_copy(world, tmp_path)
    f = root / rel
    copy = tmp_path / "pub" / f.name
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(f.read_bytes())
    copy.chmod(0o666)
    f.unlink()
    f.symlink_to(copy)
    rc, doc = _compliance(root)
    checks = _checks(doc)
    assert rc == 1 and checks["access.permissions"]["status"] == "fail"
    assert any("symbolic link" in e for e in checks["access.permissions"]["evidence"])
    read = "config.unit" if rel.endswith(".service") else "config.release_files"
    assert checks[read]["status"] == "fail", checks[read]


def test_a_writable_external_interpreter_fails_compliance(world: World, tmp_path: Path) -> None:
    """23: installed from a sound venv that later became writable by others: drift.environment fails (it only
    warned before)."""
    extra = _writable_venv(world, tmp_path)
    venv = Path(extra["mlpy"]).parent.parent
    for d, _dirs, _files in os.walk(venv / "lib"):
        os.chmod(d, 0o755)
    root = tmp_path / "r"
    r = _run(["install", world.paths["bundle"], "--trust", world.paths["pub"], "--root", str(root),
              "--vllm-python", extra["mlpy"]], {})
    assert r.returncode == 0, r.stdout[-2000:]
    assert _compliance(root)[0] == 0
    site = next((venv / "lib").glob("python*/site-packages"))
    site.chmod(0o777)
    rc, doc = _compliance(root)
    check = _checks(doc)["drift.environment"]
    assert rc == 1 and check["status"] == "fail", check
    assert any(str(site) in e and "writable by group or others" in e for e in check["evidence"])


def test_a_compliance_timer_interpreter_writable_by_others_fails(world: World, tmp_path: Path) -> None:
    """09: the compliance service runs an interpreter whose venv others can write: drift.environment names it."""
    extra = _writable_venv(world, tmp_path)
    root = _root_copy(world, tmp_path)
    unit = root / "etc/systemd/system/gptoss-compliance@.service"
    text = unit.read_text()
    unit.write_text(text.replace(sys.executable, extra["mlpy"]) if sys.executable in text else
                    text.replace("ExecStart=", f"ExecStart={extra['mlpy']} -m gptossctl ", 1))
    rc, doc = _compliance(root)
    check = _checks(doc)["drift.environment"]
    assert rc == 1 and check["status"] == "fail", check
    assert any(extra["mlpy"] in e for e in check["evidence"]), check["evidence"]


def test_kernel_caches_are_emptied_when_a_release_is_put_in_service(world: World, tmp_path: Path) -> None:
    """33: what the service planted in its kernel caches (torch.compile/inductor, Triton, FlashInfer; its
    replicas' too) is gone after install and rollback; a link planted as a cache is removed, not followed."""
    root = _root_copy(world, tmp_path)
    layout = Layout(root, INSTANCE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")

    def plant() -> list[Path]:
        files = [layout.cache / "vllm/torch_compile_cache/0123/rank_0_0/inductor_cache/zz/czz.py",
                 layout.cache / "triton/deadbeef/triton_.cubin", layout.state / ".cache/flashinfer/j/k.so",
                 Layout(root, f"{INSTANCE}-r0").cache / "triton/x/y.cubin"]
        for f in files:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("planted")
        return files

    files = plant()
    r = _run(["install", world.paths["bundle"], "--trust", world.paths["pub"], "--root", str(root),
              "--vllm-python", sys.executable, "--repair"], {})
    assert r.returncode == 0, r.stdout[-2000:]
    assert not any(f.exists() for f in files)
    assert "caches" in {s["step"] for s in json.loads(r.stdout)["data"]["steps"]}
    plant()
    (layout.cache / "triton").rename(tmp_path / "t")
    (layout.cache / "triton").symlink_to(outside)
    removed = wipe_kernel_caches(layout)
    assert f"/var/cache/gptoss/{INSTANCE}/triton" in removed and (outside / "keep").exists()
    assert not (layout.cache / "vllm").exists() and not (layout.cache / "triton").is_symlink()
