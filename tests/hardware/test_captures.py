"""Every real capture in ../shared/fixtures/gpu parses, or is refused with a message saying how to
capture what is needed; and the facts the field reference lists come out exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptossctl.adapters.captures import parse_amd_smi_json, parse_nvidia_smi_csv, parse_nvidia_smi_xml, parse_rocm_smi_json
from gptossctl.errors import UsageError
from tests.conftest import FIXTURES

GPU = FIXTURES / "gpu"
ALL = sorted(p for p in GPU.rglob("*") if p.suffix in (".xml", ".csv", ".json"))
REFUSED = {"sample_amd_discovery.json", "rocm-smi-a-json_MI250_1card__nexus-gpu_amd.go-comment.json"}


def parse(path: Path):  # type: ignore[no-untyped-def]
    if path.suffix == ".xml":
        return parse_nvidia_smi_xml(path)
    if path.suffix == ".csv":
        return parse_nvidia_smi_csv(path)
    if "amd-smi" in path.name:
        return parse_amd_smi_json(path)
    return parse_rocm_smi_json(path)


def test_fixtures_are_present() -> None:
    assert len(ALL) >= 60, f"expected the shared GPU captures at {GPU}"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_capture_parses_or_is_refused_clearly(path: Path) -> None:
    if path.name in REFUSED:
        with pytest.raises(UsageError) as exc:
            parse(path)
        assert exc.value.code == "hw.capture_invalid"
        assert "no VRAM total" in exc.value.message and "--showmeminfo vram" in (exc.value.hint or "")
        return
    inv = parse(path)
    assert inv.gpus, path
    for g in inv.gpus:
        assert g.name and g.vendor in ("nvidia", "amd")


def _one(name: str):  # type: ignore[no-untyped-def]
    (path,) = [p for p in ALL if p.name == name]
    return parse(path)


@pytest.mark.parametrize("name, gpu_name, mib", [
    ("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv", "NVIDIA H100 80GB HBM3", 81559),
    ("linux-x86_64__nvidia-h200__590.48.01__idle-query-gpu.csv", "NVIDIA H200", 143771),
    ("nvidia_smi__a100-sxm4-v12.xml", "NVIDIA A100-SXM4-80GB", 81920),
    ("linux-x86_64__nvidia-l40s__595.80__idle-query-gpu.csv", "NVIDIA L40S", 46068),
    ("query2_2xL4.xml", "NVIDIA L4", 23034),
    ("nvidia_smi__a10g.xml", "NVIDIA A10G", 23028),
    ("linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__idle-query-gpu.csv", "NVIDIA GeForce RTX 4080 SUPER", 16376),
    ("nvidia_smi__tesla-t4.xml", "Tesla T4", 15360),
])
def test_memory_is_what_the_driver_reports(name: str, gpu_name: str, mib: int) -> None:
    g = _one(name).gpus[0]
    assert (g.name, g.memory_total_mib) == (gpu_name, mib)


def test_h100_reports_less_than_80_gib() -> None:
    assert _one("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv").gpus[0].memory_total_mib < 80 * 1024


def test_csv_compute_capability_is_reported_xml_is_inferred() -> None:
    csv = _one("linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv").gpus[0]
    assert csv.compute_capability == (9, 0) and not csv.cc_inferred
    xml = _one("nvidia_smi__a10g.xml").gpus[0]
    assert xml.compute_capability == (8, 6) and xml.cc_inferred
    assert _one("gtx-1card.xml").gpus[0].compute_capability == (7, 0)  # V100
    assert _one("nvidia_smi__pro-6000-maxq-blackwell-v13.xml").gpus[0].compute_capability == (12, 0)
    assert _one("nvidia_smi__gtx-1660-ti.xml").gpus[0].compute_capability is None  # "Graphics Device"


def test_mig_slices_from_xml_and_missing_from_csv() -> None:
    a100 = _one("nvidia_smi__a100-sxm4-v12.xml")
    g = a100.gpus[0]
    assert g.mig_enabled is True and len(g.mig_slices) == 4
    assert all(s.memory_mib < g.memory_total_mib for s in g.mig_slices)  # type: ignore[operator]
    h100 = _one("linux-x86_64__nvidia-h100-mig__590.48.01__idle-query-gpu.csv")
    assert h100.gpus[0].mig_enabled is True and h100.gpus[0].mig_slices == ()
    assert any("MIG slice sizes" in n for n in h100.notes)


def test_driver_and_cuda_quirks() -> None:
    k80 = _one("nvidia_smi_out_of_order.xml")
    assert k80.cuda_driver_version is None and len(k80.gpus) == 4  # "Not Found"
    assert [g.pci_bus_id for g in k80.gpus][0] == "00001580:00:00.0"
    assert _one("nvidia_smi__gtx-1070-ti.xml").driver_version is None  # a fragment
    assert _one("nvidia_smi_outdated_gpu.xml").gpus[0].memory_total_mib is None  # GT 730, no memory data
    assert _one("query2_2xL4.xml").cuda_driver_version == "12.5"


def test_amd_units_and_spellings() -> None:
    assert _one("hygon-gpu-24.04.3-rocm-smi.json").gpus[0].memory_total_mib == 65520  # MiB, not bytes
    mi250 = _one("sample_amd_metrics.json").gpus
    assert [(g.memory_total_mib, g.gfx) for g in mi250] == [(65520, "gfx90a")] * 2
    mi210 = _one("amd-smi-static-json_MI210.json").gpus[0]
    assert (mi210.name, mi210.memory_total_mib, mi210.gfx) == ("AMD Instinct MI210", 65520, "gfx90a")
    old = _one("amd_rocm_smi__rx6700xt_rocm430.json").gpus[0]
    assert old.name == "67XA6S"  # "Card series" held the vendor id 0x1002 on ROCm 4.3
    assert _one("amd_rocm_smi__mi100_rocm571.json").gpus[0].name == "Arcturus GL-XL [Instinct MI100]"


def test_garbage_is_refused_with_a_hint(tmp_path: Path) -> None:
    bad = tmp_path / "x.xml"
    bad.write_text("<nvidia_smi_log><gpu>")
    with pytest.raises(UsageError) as exc:
        parse_nvidia_smi_xml(bad)
    assert exc.value.code == "hw.capture_invalid" and "nvidia-smi -q -x" in (exc.value.hint or "")
    bomb = tmp_path / "b.xml"
    bomb.write_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><nvidia_smi_log>&a;</nvidia_smi_log>')
    with pytest.raises(UsageError):
        parse_nvidia_smi_xml(bomb)
    noheader = tmp_path / "n.csv"
    noheader.write_text("NVIDIA H100, 81559 MiB\n")
    with pytest.raises(UsageError) as exc:
        parse_nvidia_smi_csv(noheader)
    assert "--query-gpu" in (exc.value.hint or "")
