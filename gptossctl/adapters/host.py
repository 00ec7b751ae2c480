"""Facts about this host that an install depends on."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from gptossctl.hardware.inventory import HostFacts


def _ram_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _glibc() -> str | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    return text.split()[-1] if text.startswith("glibc") else None


def _free(path: Path) -> int | None:
    """Free bytes on the filesystem that would hold path (its nearest existing parent)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def probe_host(paths: Iterable[Path] = ()) -> HostFacts:
    free = {str(p): f for p in paths if (f := _free(p)) is not None}
    return HostFacts(arch=platform.machine(), glibc=_glibc(), python=platform.python_version(),
                     ram_total_mib=_ram_mib(), disk_free_bytes=free)


def missing_libraries(names: Sequence[str]) -> list[str]:
    """The shared libraries of `names` that the dynamic loader cannot load on this host."""
    missing = []
    for lib in names:
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(lib)
    return missing
