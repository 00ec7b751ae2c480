"""Wheels for the target, not for the packing machine: vLLM and its whole dependency closure for the
recipe's Python version and platform tag, resolved by pip with explicit platform options, plus the
FlashInfer kernel wheels whose version must equal the flashinfer-python that vLLM pins.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from gptossctl.bundle.spec import TargetSpec
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, ServiceUnavailable

_NETWORK = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
                      r"Network is unreachable|Connection refused|Max retries exceeded|ConnectTimeout|ReadTimeout|"
                      r"Could not fetch URL|SSLError")

# Permissive licences need no action; anything else is listed for a person to review.
_PERMISSIVE = re.compile(
    r"^(MIT|MIT-CMU|BSD|BSD-[23]-Clause|0BSD|Apache(-| Software License|.*2\.0)|Apache-2\.0|ISC|PSF|PSF-2\.0|"
    r"Python-2\.0|Python Software Foundation|Unlicense|Zlib|HPND|CC0-1\.0|BSL-1\.0|MIT License|BSD License|"
    r"Apache Software License|The Unlicense)", re.IGNORECASE)


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # normalised (PEP 503)
    version: str
    license: str
    requires: tuple[str, ...]

    @property
    def permissive(self) -> bool:
        parts = re.split(r"\s+(?:OR|AND)\s+|\s*/\s*|\s*;\s*", self.license.strip("() "))
        return bool(self.license) and all(_PERMISSIVE.match(p.strip("() ")) for p in parts if p.strip())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_wheel(path: Path) -> Wheel:
    """Name, version, licence and requirements from the wheel's own METADATA."""
    try:
        with zipfile.ZipFile(path) as z:
            meta_name = next(n for n in z.namelist() if re.match(r"^[^/]+\.dist-info/METADATA$", n))
            meta = HeaderParser().parsestr(z.read(meta_name).decode("utf-8", "replace"))
    except (zipfile.BadZipFile, StopIteration, OSError) as exc:
        raise CheckFailed(f"{path.name} is not a valid wheel ({exc.__class__.__name__})", code="pack.bad_wheel",
                          hint="remove it from the wheelhouse and fetch it again") from None
    lic = meta.get("License-Expression") or ""
    if not lic:
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
        raw = (meta.get("License") or "").strip()
        lic = " OR ".join(classifiers) or (raw.splitlines()[0][:80] if raw and raw != "UNKNOWN" else "")
    return Wheel(path, normalise(meta["Name"]), meta["Version"], lic, tuple(meta.get_all("Requires-Dist") or ()))


def platform_tags(platform: str) -> list[str]:
    """pip matches --platform exactly: list every manylinux tag a manylinux_2_N host accepts."""
    m = re.match(r"^manylinux_2_(\d+)_(\w+)$", platform)
    if not m:
        return [platform]
    n, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{i}_{arch}" for i in range(n, 16, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{legacy[i]}_{arch}" for i in (17, 12, 5) if i <= n]
    return tags


def download(requirements: Sequence[str], target: TargetSpec, dest: Path, *,
             find_links: Sequence[Path] = (), no_index: bool = False) -> None:
    """pip download for the target interpreter and platform; binary wheels only."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
           "--python-version", target.python, "--implementation", "cp", "-d", str(dest)]
    for tag in platform_tags(target.platform):
        cmd += ["--platform", tag]
    for link in find_links:
        cmd += ["--find-links", str(link)]
    if no_index:
        cmd.append("--no-index")
    env = dict(os.environ)
    if no_index:
        # A wheelhouse pack takes the wheelhouse and nothing else: not the find-links or extra
        # indexes of this machine's pip configuration.
        env["PIP_CONFIG_FILE"] = os.devnull
    try:
        res = subprocess.run([*cmd, *requirements], capture_output=True, text=True, timeout=3600, env=env)
    except FileNotFoundError:
        raise EnvironmentNotReady("pip is not available to download wheels", code="pack.no_pip") from None
    if res.returncode != 0 and _NETWORK.search(res.stderr):
        hosts = sorted(set(re.findall(r"host='([^']+)'", res.stderr))) or ["the package index"]
        raise ServiceUnavailable(f"cannot reach {', '.join(hosts)} to download wheels for the target",
                                 code="pack.index_unreachable",
                                 hint="check the connection (or PIP_INDEX_URL for a local mirror), or pack from a "
                                      "wheelhouse: wheels.dir in the recipe or --wheelhouse DIR")
    if res.returncode != 0:
        missing = re.findall(r"No matching distribution found for (\S+)", res.stderr)
        conflict = "ResolutionImpossible" in res.stderr or "conflicting dependencies" in res.stderr
        if missing:
            raise CheckFailed(
                f"no wheel for the target ({target.platform}, Python {target.python}): {', '.join(missing)}",
                code="pack.no_wheel_for_target",
                findings=[Finding("pack.no_wheel_for_target", m, f"no {target.platform} wheel for Python "
                                  f"{target.python}") for m in missing],
                hint="check the recipe's target (python, platform), or add the wheel to the wheelhouse")
        raise CheckFailed("resolving the target's wheels failed" + (" (conflicting requirements)" if conflict else ""),
                          code="pack.wheel_resolution_failed", hint=res.stderr.strip().splitlines()[-1][:300]
                          if res.stderr.strip() else "run pip download by hand to see why")


def flashinfer_pin(wheels: Sequence[Wheel]) -> str | None:
    """The flashinfer-python version vLLM pins (from vllm's Requires-Dist), if any."""
    vllm = next((w for w in wheels if w.name == "vllm"), None)
    if vllm is None:
        return None
    for req in vllm.requires:
        m = re.match(r"^flashinfer[-_]python\s*==\s*([^\s;,]+)", req, re.IGNORECASE)
        if m:
            return m.group(1)
    return None


def _base_version(v: str) -> str:
    return v.split("+", 1)[0]  # flashinfer-jit-cache carries a local label: 0.7.2.post1+cu130


def check_flashinfer(kernels: Sequence[Wheel], pin: str) -> list[Finding]:
    findings = []
    for name in ("flashinfer-cubin", "flashinfer-jit-cache"):
        found = [w for w in kernels if w.name == name]
        if not found:
            findings.append(Finding("kernels.flashinfer_missing", name, f"no {name} wheel; vLLM pins flashinfer-python=={pin}"))
        for w in found:
            if _base_version(w.version) != pin:
                findings.append(Finding("kernels.flashinfer_mismatch", w.path.name,
                                        f"{name} {w.version} does not match flashinfer-python=={pin} that vLLM pins"))
    return findings


def cuda_runtime(wheels: Sequence[Wheel]) -> str | None:
    """The CUDA runtime line the wheels need, from the nvidia-cuda-runtime wheel that torch pulls in."""
    for w in wheels:
        if re.match(r"^nvidia-cuda-runtime(-cu\d+)?$", w.name):
            m = re.match(r"^(\d+)\.(\d+)", w.version)
            if m:
                return f"{m.group(1)}.{m.group(2)}"
    return None
