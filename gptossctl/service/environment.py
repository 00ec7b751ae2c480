"""Build a release's Python environment offline from the bundle's own wheels.

The bundle's wheel set is the lock: pack resolved it for the target, so install takes exactly those
wheels (`--no-deps`), from files only (`--offline --no-index`). uv does it (fast, hard-links from its
cache); the uv binary comes from PATH or from the uv wheel the bundle ships.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from gptossctl.errors import CheckFailed, EnvironmentNotReady

VENV = "venv"


def wheels_in(release: Path) -> list[Path]:
    return sorted((release / "payload" / "wheels").glob("*.whl")) + sorted((release / "payload" / "kernels").glob("*.whl"))


def find_uv(wheels: list[Path], scratch: Path) -> Path:
    """uv beside this Python, on PATH, or unpacked from the bundle's uv wheel."""
    for cand in (Path(sys.executable).parent / "uv", shutil.which("uv")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    for w in wheels:
        if w.name.startswith("uv-"):
            with zipfile.ZipFile(w) as z:
                member = next((n for n in z.namelist() if n.endswith(".data/scripts/uv")), None)
                if member:
                    scratch.mkdir(parents=True, exist_ok=True)
                    out = scratch / "uv"
                    out.write_bytes(z.read(member))
                    out.chmod(0o755)
                    return out
    raise EnvironmentNotReady("uv is not available to build the environment", code="install.no_uv",
                              hint="pack the bundle with wheels.include_uv: true, or install uv on this host")


def _uv(uv: Path, *args: str, cache: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    # uv hard-links from its cache (same filesystem as /opt) and falls back to copying.
    env.update(UV_CACHE_DIR=str(cache), UV_OFFLINE="1", UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    res = subprocess.run([str(uv), *args], capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-6:]
        raise CheckFailed("building the Python environment from the bundle's wheels failed",
                          code="install.env_failed", hint=" | ".join(tail)[:600] or "run uv by hand to see why")


def build_env(release: Path, *, python: Path, cache: Path, root: Path = Path("/")) -> Path:
    """Create release/venv from the release's wheels with `python` (a path on the target, found under
    the staging `root`); return the new venv's interpreter. The venv is relocatable: renaming the release
    directory into place keeps it working."""
    wheels = wheels_in(release)
    if not wheels:
        raise CheckFailed("the bundle carries no wheels to build an environment from", code="install.no_wheels",
                          hint="pack with a vllm pin or a wheelhouse, or install with --vllm-python PATH "
                               "(an environment you maintain)")
    host_python = root / python.relative_to("/") if python.is_absolute() else python
    if not host_python.exists():
        raise EnvironmentNotReady(f"Python {python} not found{' under ' + str(root) if root != Path('/') else ''}",
                                  code="install.no_python", hint="install python3 (and its venv support) or pass "
                                  "--python PATH")
    cache.mkdir(parents=True, exist_ok=True)
    uv = find_uv(wheels, cache / "bin")
    venv = release / VENV
    _uv(uv, "venv", "--relocatable", "--python", str(host_python), str(venv), cache=cache)
    _uv(uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--no-index", "--no-deps",
        "--compile-bytecode", *map(str, wheels), cache=cache)
    if root != Path("/"):
        _relocate(venv, python)
    return venv / "bin" / "python"


def _relocate(venv: Path, python: Path) -> None:
    """A staged venv points at the interpreter as the booted tree will see it, not through the root."""
    cfg = venv / "pyvenv.cfg"
    lines = [f"home = {python.parent}" if ln.startswith("home =") else ln for ln in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")
    link = venv / "bin" / "python"
    link.unlink()
    link.symlink_to(python)


def check_imports(python: Path, module: str = "vllm.entrypoints.openai.api_server") -> None:
    """Import the server in the new environment before touching the running service."""
    res = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                              "DO_NOT_TRACK": "1", "HOME": "/nonexistent"})
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-3:]
        raise CheckFailed(f"the new environment cannot import {module}", code="install.env_broken",
                          hint=" | ".join(tail)[:600])
