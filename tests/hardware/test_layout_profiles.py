"""Every supported architecture has a memory-class profile for each model: a card is accepted whenever its
architecture and its memory are, and refused only for one of those two reasons.

Memory sizes are what drivers report (real captures where ../shared/fixtures has one, idled: the check
of busy GPUs is tested elsewhere); the verdicts follow from the profiles' own sizing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gptossctl.adapters.captures import parse_nvidia_smi_csv, parse_nvidia_smi_xml
from gptossctl.hardware.check import Requirements, check_models
from gptossctl.hardware.inventory import Gpu, Inventory
from gptossctl.hardware.profiles import load_profiles
from gptossctl.hardware.requirements import KNOWN_MODELS
from tests.conftest import FIXTURES

GPU = FIXTURES / "gpu"
NVIDIA_ARCHS = ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0")
AMD_ARCHS = ("gfx942", "gfx950")


def _captured(path: str) -> Gpu:
    p = GPU / path
    inv = parse_nvidia_smi_xml(p) if p.suffix == ".xml" else parse_nvidia_smi_csv(p)
    return replace(inv.gpus[0], index=0, memory_free_mib=None)  # the same card, idle


def _card(name: str, cc: str, mib: int) -> Gpu:
    major, minor = (int(x) for x in cc.split("."))
    return Gpu(0, "nvidia", name, mib, None, (major, minor))


# (card, one card holds 20b, one card holds 120b)
CARDS: list[tuple[Gpu, bool, bool]] = [
    (_card("NVIDIA A100-PCIE-40GB", "8.0", 40960), True, False),
    (_card("NVIDIA A100-SXM4-80GB", "8.0", 81920), True, True),
    (_card("NVIDIA A30", "8.0", 24576), True, False),
    (_captured("telegraf/nvidia_smi__a10g.xml"), True, False),
    (_captured("telegraf/nvidia_smi__3090-v13.xml"), True, False),
    (_card("NVIDIA RTX A6000", "8.6", 49140), True, False),
    (_captured("telegraf/nvidia_smi__rtx-3060-v12.xml"), False, False),  # 12 GB: below 20b's weights
    (_captured("datarhei-core/query2_2xL4.xml"), True, False),
    (_captured("telegraf/nvidia_smi__rtx-4000-sff-ada-v13.xml"), True, False),  # 20 GB
    (_captured("nvidia_gpu_exporter/linux-x86_64__nvidia-l40s__595.80__idle-query-gpu.csv"), True, False),
    (_card("NVIDIA RTX 6000 Ada Generation", "8.9", 49140), True, False),
    (_captured("nvidia_gpu_exporter/linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__idle-query-gpu.csv"),
     True, False),
    (_captured("nvidia_gpu_exporter/linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv"), True, True),
    (_card("NVIDIA H100 NVL", "9.0", 95830), True, True),
    (_captured("nvidia_gpu_exporter/linux-x86_64__nvidia-h200__590.48.01__idle-query-gpu.csv"), True, True),
    (_card("NVIDIA B200", "10.0", 183359), True, True),
    (_card("NVIDIA GeForce RTX 5090", "12.0", 32607), True, False),
    (_card("NVIDIA GeForce RTX 5080", "12.0", 16303), True, False),
    (_captured("telegraf/nvidia_smi__pro-6000-maxq-blackwell-v13.xml"), True, True),  # 96 GB sm_120
    (Gpu(0, "amd", "AMD Instinct MI300X", 196592, None, gfx="gfx942"), True, True),
    (Gpu(0, "amd", "AMD Instinct MI325X", 262128, None, gfx="gfx942"), True, True),
    (Gpu(0, "amd", "AMD Instinct MI355X", 294896, None, gfx="gfx950"), True, True),
]


def _chosen(gpus: list[Gpu], model: str):  # type: ignore[no-untyped-def]
    inv = Inventory("test", tuple(replace(g, index=i) for i, g in enumerate(gpus)), "590.48.01", "13.1")
    return check_models(inv, load_profiles(), [model], Requirements()).models[0]


@pytest.mark.parametrize("card, holds_20b, holds_120b", CARDS, ids=lambda c: getattr(c, "name", ""))
def test_one_card_is_accepted_whenever_its_memory_holds_the_model(card: Gpu, holds_20b: bool,
                                                                    holds_120b: bool) -> None:
    m20, m120 = _chosen([card], "gpt-oss-20b"), _chosen([card], "gpt-oss-120b")
    assert (m20.chosen is not None, m120.chosen is not None) == (holds_20b, holds_120b), (m20.reason, m120.reason)
    for m in (m20, m120):
        if m.chosen is None:  # refused for memory, never for the architecture
            assert "short by" in m.reason or "needs 2 matching GPUs" in m.reason or "needs 8 matching" in m.reason


@pytest.mark.parametrize("card, holds_20b, holds_120b", CARDS, ids=lambda c: getattr(c, "name", ""))
def test_a_server_of_eight_such_cards_serves_120b_whenever_they_hold_it(card: Gpu, holds_20b: bool,
                                                                         holds_120b: bool) -> None:
    m = _chosen([card] * 8, "gpt-oss-120b")
    assert m.chosen is not None and m.layout is not None, m.reason  # even 8 x 12 GB holds 120b at TP8
    assert len(m.layout.replicas) * m.layout.tensor_parallel <= 8
    if holds_120b:
        assert (len(m.layout.replicas), m.layout.tensor_parallel) == (8, 1)


@pytest.mark.parametrize("cc", NVIDIA_ARCHS)
def test_every_nvidia_architecture_has_memory_class_profiles_for_both_models(cc: str) -> None:
    profiles = load_profiles()
    for model in ("gpt-oss-20b", "gpt-oss-120b"):
        classes = [p for p in profiles if p.serves(KNOWN_MODELS[model].model_class) and cc in p.match.compute_capability]
        assert classes, f"no {model} profile for sm_{cc.replace('.', '')}"
    # 16 GB holds 20b; 96 GB holds 120b on one card; 2 x 48 GB and 8 x 16 GB hold it split.
    assert _chosen([_card("16 GB card", cc, 16376)], "gpt-oss-20b").chosen is not None
    assert _chosen([_card("96 GB card", cc, 97887)], "gpt-oss-120b").chosen is not None
    assert _chosen([_card("48 GB card", cc, 46068)] * 2, "gpt-oss-120b").chosen is not None
    assert _chosen([_card("16 GB card", cc, 16376)] * 8, "gpt-oss-120b").chosen is not None


@pytest.mark.parametrize("gfx", AMD_ARCHS)
def test_every_amd_architecture_has_profiles_for_both_models(gfx: str) -> None:
    card = Gpu(0, "amd", "AMD Instinct", 196592, None, gfx=gfx)
    assert _chosen([card], "gpt-oss-20b").chosen is not None
    assert _chosen([card], "gpt-oss-120b").chosen is not None


def test_turing_is_still_refused_for_its_architecture_whatever_its_memory() -> None:
    t4 = _captured("telegraf/nvidia_smi__tesla-t4.xml")
    big = replace(t4, memory_total_mib=98304)
    assert _chosen([big], "gpt-oss-20b").chosen is None and _chosen([big] * 8, "gpt-oss-120b").chosen is None


@pytest.mark.parametrize("model", ["gpt-oss-20b", "gpt-oss-120b"])
def test_the_shipped_recipe_carries_every_profile_of_its_model(model: str) -> None:
    """Install decides with the bundle's own profiles: a profile left out of the recipe refuses its cards."""
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "bundles" / f"{model}.yaml").read_text())
    assert set(recipe["profiles"]) == {p.name for p in load_profiles() if p.serves(KNOWN_MODELS[model].model_class)}
