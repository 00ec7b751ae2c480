"""Wheels for the target, not for the packing machine: vLLM and its whole dependency closure for the
recipe's Python version and platform tag, resolved by pip with explicit platform options, plus the
FlashInfer kernel wheels whose version must equal the flashinfer-python that vLLM pins.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from gptossctl.adapters import pip
from gptossctl.errors import CheckFailed, Finding
from gptossctl.pack.spec import TargetSpec

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
    """The requirements and their closure as wheels for the target interpreter and platform."""
    pip.download(requirements, dest, python_version=target.python, platforms=platform_tags(target.platform),
                 find_links=find_links, no_index=no_index)


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
