"""uv and the interpreters it builds: the only code that runs them.

`find_uv` takes uv beside this Python, on PATH, or out of the bundle's own uv wheel; `run` calls it offline
with no configuration of this host's leaking in; `import_check` imports the server module in a new
environment before the running service is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from gptossctl.errors import CheckFailed, EnvironmentNotReady
from gptossctl.hardware.vllm_flags import FLAGS_PROGRAM


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


def run(uv: Path, *args: str, cache: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    # uv hard-links from its cache (same filesystem as /opt) and falls back to copying.
    env.update(UV_CACHE_DIR=str(cache), UV_OFFLINE="1", UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    res = subprocess.run([str(uv), *args], capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-6:]
        raise CheckFailed("building the Python environment from the bundle's wheels failed",
                          code="install.env_failed", hint=" | ".join(tail)[:600] or "run uv by hand to see why")


_SERVICE_ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                "HOME": "/nonexistent"}


def serve_options(python: Path) -> frozenset[str]:
    """Every option string of vLLM's own `vllm serve` parser, as the environment's vLLM builds it."""
    res = subprocess.run([str(python), "-c", FLAGS_PROGRAM], capture_output=True, text=True, timeout=600,
                         env=_SERVICE_ENV)
    try:
        doc = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
        options = frozenset(str(o) for o in doc["options"]) if isinstance(doc, dict) else None
    except (ValueError, IndexError, KeyError, TypeError):
        options = None
    if not options:
        tail = res.stderr.strip().splitlines()[-3:]
        raise CheckFailed("the new environment's vLLM did not list its serve options", code="install.env_broken",
                          hint=" | ".join(tail)[:600] or "rebuild the bundle's environment (install --repair)")
    return options


def import_check(python: Path, module: str) -> None:
    """Import `module` with `python`, offline and with no home directory: what the service will do first."""
    res = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                              "DO_NOT_TRACK": "1", "HOME": "/nonexistent"})
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-3:]
        raise CheckFailed(f"the new environment cannot import {module}", code="install.env_broken",
                          hint=" | ".join(tail)[:600])
