"""pip, run as a subprocess of this interpreter: the only code that downloads or builds wheels.

`download` resolves wheels for another machine (explicit platform tags and Python version, binary only);
`build_wheel` builds a wheel of a local project. Failures become gptossctl errors: an index that cannot be
reached is an external failure (4) naming the host; a requirement with no wheel for the target is a failed
check (1) naming each one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, ServiceUnavailable

_NETWORK = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
                      r"Network is unreachable|Connection refused|Max retries exceeded|ConnectTimeout|ReadTimeout|"
                      r"Could not fetch URL|SSLError")


def _run(args: list[str], *, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except FileNotFoundError:
        raise EnvironmentNotReady("pip is not available", code="pack.no_pip",
                                  hint="install gptossctl with its dependencies (pip is one)") from None
    except subprocess.TimeoutExpired:
        raise ServiceUnavailable(f"pip {args[0]} did not finish in {timeout:.0f} s", code="pack.pip_timeout",
                                 hint="check the connection to the index, or pack from a local wheelhouse") from None


def download(requirements: Sequence[str], dest: Path, *, python_version: str, platforms: Sequence[str],
             find_links: Sequence[Path] = (), no_index: bool = False) -> None:
    """pip download for a target interpreter and platform; binary wheels only."""
    dest.mkdir(parents=True, exist_ok=True)
    args = ["download", "--only-binary=:all:", "--disable-pip-version-check", "--python-version", python_version,
            "--implementation", "cp", "-d", str(dest)]
    for tag in platforms:
        args += ["--platform", tag]
    for link in find_links:
        args += ["--find-links", str(link)]
    if no_index:
        args.append("--no-index")
    env = dict(os.environ)
    if no_index:
        # A wheelhouse pack takes the wheelhouse and nothing else: not the find-links or extra indexes of this
        # machine's pip configuration.
        env["PIP_CONFIG_FILE"] = os.devnull
    res = _run([*args, *requirements], env=env, timeout=3600)
    if res.returncode == 0:
        return
    if _NETWORK.search(res.stderr):
        hosts = sorted(set(re.findall(r"host='([^']+)'", res.stderr))) or ["the package index"]
        raise ServiceUnavailable(f"cannot reach {', '.join(hosts)} to download wheels for the target",
                                 code="pack.index_unreachable",
                                 hint="check the connection (or PIP_INDEX_URL for a local mirror), or pack from a "
                                      "wheelhouse: wheels.dir in the recipe or --wheelhouse DIR")
    missing = re.findall(r"No matching distribution found for (\S+)", res.stderr)
    target = f"{platforms[0] if platforms else 'this platform'}, Python {python_version}"
    if missing:
        raise CheckFailed(f"no wheel for the target ({target}): {', '.join(missing)}", code="pack.no_wheel_for_target",
                          findings=[Finding("pack.no_wheel_for_target", m, f"no wheel for {target}") for m in missing],
                          hint="check the recipe's target (python, platform), or add the wheel to the wheelhouse")
    conflict = "ResolutionImpossible" in res.stderr or "conflicting dependencies" in res.stderr
    raise CheckFailed("resolving the target's wheels failed" + (" (conflicting requirements)" if conflict else ""),
                      code="pack.wheel_resolution_failed", hint=res.stderr.strip().splitlines()[-1][:300]
                      if res.stderr.strip() else "run pip download by hand to see why")


def build_wheel(project: Path, dest: Path) -> None:
    """A wheel of a local project into dest, with the build backend already installed here (no download)."""
    dest.mkdir(parents=True, exist_ok=True)
    res = _run(["wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-w", str(dest),
                str(project)], env=dict(os.environ), timeout=900)
    if res.returncode != 0:
        raise CheckFailed(f"building the wheel of {project} failed", code="pack.self_wheel_failed",
                          hint=(res.stderr.strip().splitlines() or ["pip wheel failed"])[-1][:300])
