"""Verdicts on real captures (the expected answers derived by hand from each GPU's reported memory,
compute capability and driver; see profiles/*.yaml for the sizing), plus synthetic multi-GPU cases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gptossctl.adapters.captures import parse_nvidia_smi_csv
from gptossctl.adapters.gpus import Captures
from gptossctl.hardware.check import Requirements, check_models, required_driver
from gptossctl.hardware.inventory import Gpu, Inventory
from gptossctl.hardware.profiles import load_profiles
from gptossctl.install.preflight import assess
from tests.hardware.test_captures import ALL

EXPORTER = "linux-x86_64__nvidia-{}__idle-query-gpu.csv"


def report_for(name: str, model: str | None = None):  # type: ignore[no-untyped-def]
    (path,) = [p for p in ALL if p.name == name]
    kind = {".xml": "nvidia_smi_xml", ".csv": "nvidia_smi_csv"}.get(path.suffix, "rocm_smi_json")
    return assess(model=model, captures=Captures(**{kind: path}))


def chosen(report, model: str):  # type: ignore[no-untyped-def]
    (m,) = [m for m in report.models if m.model == model]
    return (m.chosen.profile.name, m.chosen.tensor_parallel) if m.chosen else None, m


@pytest.mark.parametrize("capture, want_120b, want_20b", [
    (EXPORTER.format("h100-80gb-hbm3__590.48.01"), ("hopper-120b", 1), ("hopper-20b", 1)),
    (EXPORTER.format("h200__590.48.01"), ("hopper-120b", 1), ("hopper-20b", 1)),
    (EXPORTER.format("l40s__595.80"), None, ("l40s-20b", 1)),
    (EXPORTER.format("geforce-rtx-4080-super__595.71.05"), None, ("16gb-20b", 1)),
    ("nvidia_smi__3090-v13.xml", None, ("24gb-20b", 1)),
    (EXPORTER.format("geforce-rtx-2080-super__610.57.04"), None, None),
    ("gtx-1card.xml", None, None),  # V100
    ("nvidia_smi__tesla-t4.xml", None, None),
    ("sample_amd_metrics.json", None, None),  # MI250, gfx90a
])
def test_verdicts_on_real_captures(capture: str, want_120b, want_20b) -> None:  # type: ignore[no-untyped-def]
    report = report_for(capture)
    assert chosen(report, "gpt-oss-120b")[0] == want_120b
    assert chosen(report, "gpt-oss-20b")[0] == want_20b


def test_h100_fits_120b_on_one_gpu_computed_not_labelled() -> None:
    got, m = chosen(report_for(EXPORTER.format("h100-80gb-hbm3__590.48.01")), "gpt-oss-120b")
    assert got == ("hopper-120b", 1)
    need = m.chosen.need
    assert need.total < need.budget < 80 * 2**30  # 81559 MiB x 0.95 is below 80 GiB, and it still fits


def test_16gb_card_fits_20b_with_a_reduced_context() -> None:
    _, m = chosen(report_for(EXPORTER.format("geforce-rtx-4080-super__595.71.05")), "gpt-oss-20b")
    assert m.chosen.profile.name == "16gb-20b" and m.chosen.profile.context_len == 16384
    other = {f.profile.name: f for f in m.fits}
    assert not other["24gb-20b"].fits and "short by" in other["24gb-20b"].reasons[-1]


def test_v100_is_refused_with_a_reason() -> None:
    report = report_for("gtx-1card.xml")
    for m in report.models:
        assert m.chosen is None
        arch = [c for c in m.checks if c.id == "gpu.arch"][0]
        assert arch.status == "fail" and "sm_70" in arch.message and "below sm_75" in arch.message
        assert all("sm_70" in " ".join(f.reasons) or "driver" in " ".join(f.reasons) for f in m.fits)


def test_t4_is_refused_for_architecture_and_memory() -> None:
    _, m = chosen(report_for("nvidia_smi__tesla-t4.xml"), "gpt-oss-20b")
    assert m.chosen is None
    assert any(c.id == "gpu.arch" and "Turing" in c.message for c in m.checks)


def test_old_driver_is_refused_for_cuda_13_wheels_but_fits_a_cuda_12_bundle() -> None:
    (path,) = [p for p in ALL if p.name == "query2_2xL4.xml"]
    from gptossctl.adapters.captures import parse_nvidia_smi_xml

    inv = parse_nvidia_smi_xml(path)  # 2x L4, driver 555, CUDA 12.5
    profiles = load_profiles()
    cuda13 = check_models(inv, profiles, ["gpt-oss-20b"], Requirements())
    m = cuda13.models[0]
    assert m.chosen is None and "555.42.06 < 580" in m.reason
    assert all(not f.fits for f in m.fits)  # every profile row says no, with the driver as a reason
    cuda12 = check_models(inv, profiles, ["gpt-oss-20b"], Requirements(cuda_line="12.4"))
    assert cuda12.models[0].chosen.profile.name == "24gb-20b"
    assert required_driver("12.8") == 570 and required_driver("12.4") == 525 and required_driver("13.0") == 580


def test_busy_gpu_is_refused_with_the_processes_named() -> None:
    _, m = chosen(report_for(EXPORTER.format("h100-80gb-hbm3__590.48.01").replace("idle", "load")), "gpt-oss-120b")
    assert m.chosen is None
    hopper = [f for f in m.fits if f.profile.name == "hopper-120b"][0]
    assert "already in use" in hopper.reasons[0] and "stop the other processes" in hopper.reasons[0]


def test_mig_without_slice_sizes_and_with_slices() -> None:
    _, m = chosen(report_for(EXPORTER.format("h100-mig__590.48.01")), "gpt-oss-120b")
    assert m.chosen is None
    mig = [c for c in m.checks if c.id == "gpu.mig"][0]
    assert "nvidia-smi -i 0 -mig 0" in (mig.remedy or "")
    assert any("no slice sizes" in r for f in m.fits for r in f.reasons)
    (path,) = [p for p in ALL if p.name == "nvidia_smi__a100-sxm4-v12.xml"]
    from gptossctl.adapters.captures import parse_nvidia_smi_xml

    inv = parse_nvidia_smi_xml(path)  # A100 80GB split into 4 slices of about 20 GB
    r = check_models(inv, load_profiles(), ["gpt-oss-120b", "gpt-oss-20b"], Requirements(cuda_line="12.2"))
    assert r.models[0].chosen is None  # 120b fits no slice
    # 19968 MiB x 0.92 = 17.9 GiB holds 12.8 weights + 3.0 KV (2 x 64k tokens) + 1.5 overhead
    assert r.models[1].chosen.profile.name == "24gb-20b" and "serving on one MIG slice" in r.models[1].chosen.warnings


def _inv(*gpus: Gpu, driver: str = "590.48.01") -> Inventory:
    return Inventory("test", tuple(gpus), driver, "13.1")


def test_two_l40s_serve_120b_with_tensor_parallel() -> None:
    l40s = parse_nvidia_smi_csv([p for p in ALL if p.name == EXPORTER.format("l40s__595.80")][0]).gpus[0]
    one = check_models(_inv(l40s), load_profiles(), ["gpt-oss-120b"], Requirements())
    assert one.models[0].chosen is None
    l40s_fit = [f for f in one.models[0].fits if f.profile.name == "l40s-120b"][0]
    assert "tensor parallel 2 needs 2 matching GPUs, 1 available" in l40s_fit.reasons
    two = check_models(_inv(l40s, replace(l40s, index=1)), load_profiles(), ["gpt-oss-120b"], Requirements())
    c = two.models[0].chosen
    assert (c.profile.name, c.tensor_parallel, c.gpus) == ("l40s-120b", 2, (0, 1))
    assert c.profile.vllm_config(tensor_parallel=2)["tensor-parallel-size"] == 2


def test_mi300x_gets_the_rocm_profile() -> None:
    mi300x = Gpu(0, "amd", "AMD Instinct MI300X", 196592, 196000, gfx="gfx942")
    r = check_models(Inventory("test", (mi300x,)), load_profiles(), ["gpt-oss-120b"], Requirements())
    c = r.models[0].chosen
    assert c.profile.name == "mi300x-120b" and c.profile.vllm.env["VLLM_ROCM_USE_AITER"] == "1"


def test_zero_gpus_is_a_failure_not_a_pass() -> None:
    r = check_models(Inventory("test", ()), load_profiles(), ["gpt-oss-20b"], Requirements())
    assert r.models[0].chosen is None
    assert [c.status for c in r.models[0].checks if c.id == "gpu.count"] == ["fail"]


def test_profile_outside_its_vllm_range_does_not_fit() -> None:
    h100 = parse_nvidia_smi_csv([p for p in ALL if p.name == EXPORTER.format("h100-80gb-hbm3__590.48.01")][0])
    r = check_models(h100, load_profiles(), ["gpt-oss-120b"], Requirements(vllm_version="0.34.1"))
    assert r.models[0].chosen is None
    assert "valid for vLLM >=0.33.0,<0.34" in r.models[0].fits[0].reasons[0]


def test_a_reason_every_gpu_shares_is_said_once_for_the_gpus_it_applies_to() -> None:
    _, m = chosen(report_for("gtx-8card.xml", "gpt-oss-20b"), "gpt-oss-20b")  # 8x V100S, driver 460
    hopper = [f for f in m.fits if f.profile.name == "hopper-20b"][0]
    said = "GPU 0-7 (Tesla V100S-PCIE-32GB): sm_70, the profile needs sm_90"
    assert [r for r in hopper.reasons if "sm_70" in r] == [said]
    assert hopper.to_dict()["gpu_reasons"] == [{"gpus": list(range(8)), "message": said}]
    amd = [f for f in m.fits if f.profile.name == "mi300x-20b"][0]
    assert [r for r in amd.reasons if "nvidia" in r] == ["GPU 0-7 (Tesla V100S-PCIE-32GB): nvidia, the profile is for amd"]
    arch = [c for c in m.checks if c.id == "gpu.arch"]
    assert len(arch) == 1 and arch[0].subject == "GPU 0-7 (Tesla V100S-PCIE-32GB)"
    assert arch[0].to_dict()["gpus"] == list(range(8))
    assert len([c for c in m.checks if c.id == "gpu.persistence"]) == 1
    assert m.reason.count("sm_70") == 1, m.reason


def test_gpus_that_differ_are_named_apart() -> None:
    h100 = parse_nvidia_smi_csv([p for p in ALL if p.name == EXPORTER.format("h100-80gb-hbm3__590.48.01")][0]).gpus[0]
    l40s = parse_nvidia_smi_csv([p for p in ALL if p.name == EXPORTER.format("l40s__595.80")][0]).gpus[0]
    gpus = (replace(l40s, index=0), replace(h100, index=1), replace(l40s, index=2), replace(l40s, index=3))
    r = check_models(_inv(*gpus), load_profiles(), ["gpt-oss-20b"], Requirements())
    blackwell = [f for f in r.models[0].fits if f.profile.name == "blackwell-20b"][0]
    assert blackwell.reasons[:2] == ("GPU 0, 2-3 (NVIDIA L40S): sm_89, the profile needs sm_100",
                                     "GPU 1 (NVIDIA H100 80GB HBM3): sm_90, the profile needs sm_100")
    assert [g["gpus"] for g in blackwell.to_dict()["gpu_reasons"]] == [[0, 2, 3], [1]]


def test_mig_on_several_gpus_is_one_check_whose_remedy_names_them_all() -> None:
    h100 = parse_nvidia_smi_csv([p for p in ALL if p.name == EXPORTER.format("h100-80gb-hbm3__590.48.01")][0]).gpus[0]
    gpus = [replace(h100, index=i, mig_enabled=True) for i in range(4)]
    r = check_models(_inv(*gpus), load_profiles(), ["gpt-oss-20b"], Requirements())
    (mig,) = [c for c in r.models[0].checks if c.id == "gpu.mig"]
    assert mig.gpus == (0, 1, 2, 3) and mig.subject == "GPU 0-3 (NVIDIA H100 80GB HBM3)"
    assert "nvidia-smi -i 0,1,2,3 -mig 0" in (mig.remedy or "")
    hopper = [f for f in r.models[0].fits if f.profile.name == "hopper-20b"][0]
    assert hopper.reasons == ("GPU 0-3 (NVIDIA H100 80GB HBM3): MIG is on and the capture gives no slice sizes",)
