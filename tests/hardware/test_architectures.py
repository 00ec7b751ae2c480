"""Every GPU architecture `hw check` names has a shipped profile that fits it, or a stated refusal.

The walk uses the real captures in tests/data/gpu where one exists (their GPU facts: name, memory, MIG;
the driver is set to one the CUDA 13 wheels accept and the memory other processes held at capture time
is dropped, since the architecture is what is judged here; the driver and busy-GPU checks have their own
tests) and synthetic GPU facts otherwise (B200, B300, MI300X, MI355X, and the compute capabilities no
profile lists). A refusal is a failed `gpu.arch` check with a remedy, and it is what the verdict says.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gptossctl.adapters.captures import parse_nvidia_smi_csv, parse_nvidia_smi_xml, parse_rocm_smi_json
from gptossctl.hardware import architectures
from gptossctl.hardware.check import Requirements, check_models, gpu_arch_check
from gptossctl.hardware.inventory import _CC_BY_ARCH, _CC_BY_NAME, Gpu, Inventory, infer_compute_capability
from gptossctl.hardware.profiles import load_profiles
from tests.hardware.test_captures import ALL

MODELS = ["gpt-oss-20b", "gpt-oss-120b"]
DRIVER = ("580.82.07", "13.0")


def _capture(name: str) -> Inventory:
    (path,) = [p for p in ALL if p.name == name]
    parse = {".xml": parse_nvidia_smi_xml, ".csv": parse_nvidia_smi_csv}.get(path.suffix, parse_rocm_smi_json)
    inv = parse(path)
    inv = replace(inv, gpus=tuple(replace(g, memory_free_mib=None) for g in inv.gpus))
    return replace(inv, driver_version=DRIVER[0], cuda_driver_version=DRIVER[1]) if inv.driver_version else inv


def _synthetic(name: str, mib: int, *, cc: tuple[int, int] | None = None, gfx: str | None = None) -> Inventory:
    gpu = Gpu(0, "amd" if gfx else "nvidia", name, mib, mib - 600, compute_capability=cc, gfx=gfx,
              persistence_mode=True if cc else None)
    return Inventory("synthetic", (gpu,), *(DRIVER if cc else (None, None)))


# (architecture key, where its facts come from, "fits" or "refused")
CASES: list[tuple[str, object, str]] = [
    ("sm_80", lambda: _capture("nvidia_smi__a100-sxm4-v12.xml"), "fits"),  # A100 80GB, MIG slices
    ("sm_86", lambda: _capture("nvidia_smi__3090-v13.xml"), "fits"),
    ("sm_89", lambda: _capture("linux-x86_64__nvidia-l40s__595.80__idle-query-gpu.csv"), "fits"),
    ("sm_90", lambda: _capture("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv"), "fits"),
    ("sm_100", lambda: _synthetic("NVIDIA B200", 183359, cc=(10, 0)), "fits"),
    ("sm_103", lambda: _synthetic("NVIDIA B300 SXM6 AC", 275040, cc=(10, 3)), "refused"),
    ("sm_120", lambda: _capture("nvidia_smi__pro-6000-maxq-blackwell-v13.xml"), "fits"),
    ("sm_121", lambda: _synthetic("NVIDIA GB10", 122000, cc=(12, 1)), "refused"),
    ("sm_110", lambda: _synthetic("NVIDIA Jetson AGX Thor", 125000, cc=(11, 0)), "refused"),
    ("sm_87", lambda: _synthetic("NVIDIA Jetson AGX Orin", 62000, cc=(8, 7)), "refused"),
    ("sm_75", lambda: _capture("nvidia_smi__tesla-t4.xml"), "refused"),
    ("sm_70", lambda: _capture("gtx-1card.xml"), "refused"),  # V100, below sm_75
    ("sm_61", lambda: _capture("nvidia_smi__tesla_p4.xml"), "refused"),
    ("gfx942", lambda: _synthetic("AMD Instinct MI300X", 196592, gfx="gfx942"), "fits"),
    ("gfx950", lambda: _synthetic("AMD Instinct MI355X", 294896, gfx="gfx950"), "fits"),
    ("gfx90a", lambda: _capture("sample_amd_metrics.json"), "refused"),  # MI250
    ("gfx908", lambda: _capture("amd_rocm_smi__mi100_rocm602.json"), "refused"),  # MI100
]


@pytest.mark.parametrize("key, facts, want", CASES, ids=[c[0] for c in CASES])
def test_every_architecture_has_a_fitting_profile_or_a_stated_refusal(key: str, facts, want: str) -> None:  # type: ignore[no-untyped-def]
    inv = facts()
    gpu = inv.gpus[0]
    assert (gpu.gfx or f"sm_{gpu.cc_text.replace('.', '')}") == key  # the case is the architecture it names
    report = check_models(inv, load_profiles(), MODELS, Requirements())
    arch = [c for c in report.models[0].checks if c.id == "gpu.arch"][0]
    if want == "fits":
        assert report.ok, report.reason
        assert arch.status != "fail"
        return
    assert not report.ok
    assert arch.status == "fail" and arch.remedy, arch  # refused, saying why and what to do instead
    for m in report.models:
        assert arch.message in m.reason, m.reason  # the verdict names the refusal, not only profile misfits


def test_the_architecture_table_is_walked_and_covers_what_the_check_names() -> None:
    walked = {c[0] for c in CASES}
    assert set(architectures.KNOWN) <= walked, set(architectures.KNOWN) - walked
    named = {cc for _p, cc in _CC_BY_NAME} | set(_CC_BY_ARCH.values())
    for cc in named:  # every compute capability the name inference can yield is judged by the table
        assert cc < architectures.MIN_NVIDIA or f"sm_{cc[0]}{cc[1]}" in architectures.KNOWN, cc
    for p in load_profiles():  # and no profile serves an architecture the table refuses, or one it does not know
        for cc in p.match.compute_capability:
            arch = architectures.KNOWN.get(f"sm_{cc.replace('.', '')}")
            assert arch is not None and arch.status != "fail", (p.name, cc)
        for gfx in p.match.gfx:
            assert architectures.KNOWN[gfx].status != "fail", (p.name, gfx)


def test_b300_is_refused_and_never_called_the_blackwell_fast_path() -> None:
    assert infer_compute_capability("NVIDIA B300 SXM6 AC") == (10, 3)
    check = gpu_arch_check(_synthetic("NVIDIA B300 SXM6 AC", 275040, cc=(10, 3)).gpus[0])
    assert check.status == "fail" and "Blackwell Ultra" in check.message
    assert "sm_103" in check.message and "sm_100" in check.message  # the wheels' targets, stated
    assert check.remedy and "10.3" in check.remedy
