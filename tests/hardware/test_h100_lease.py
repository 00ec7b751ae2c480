"""Captures of a real H100 reviewed here decide exactly what NVML decided live on that host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptossctl.adapters.captures import parse_nvidia_smi_csv, parse_nvidia_smi_xml
from gptossctl.hardware.check import Requirements, check_models
from gptossctl.hardware.profiles import load_profiles

LEASE = Path(__file__).resolve().parents[1] / "data" / "h100-lease"
LIVE = json.loads((LEASE / "hw-live.json").read_text())


# Profiles added since the live run (memory classes, MI355X) are not in its record: compare those it had.
RECORDED = {p["profile"] for m in LIVE["data"]["models"] for p in m["profiles"]}


def _decisions(models: list[dict]) -> list[tuple]:  # type: ignore[type-arg]
    return [(m["model"], m["chosen"], m["tensor_parallel"],
             sorted((p["profile"], p["fits"], p["tensor_parallel"]) for p in m["profiles"] if p["profile"] in RECORDED))
            for m in models]


@pytest.mark.parametrize("parse,name", [(parse_nvidia_smi_xml, "h100-nvidia-smi-q.xml"),
                                        (parse_nvidia_smi_csv, "h100-query-gpu.csv")])
def test_capture_review_matches_the_live_nvml_run(parse, name) -> None:  # type: ignore[no-untyped-def]
    inv = parse(LEASE / name)
    live_gpu = LIVE["data"]["inventory"]["gpus"][0]
    (gpu,) = inv.gpus
    assert (gpu.name, gpu.memory_total_mib, gpu.uuid, gpu.cc_text) == (
        live_gpu["name"], live_gpu["memory_total_mib"], live_gpu["uuid"], live_gpu["compute_capability"])
    assert inv.driver_version == LIVE["data"]["inventory"]["driver_version"] == "580.159.04"
    report = check_models(inv, load_profiles(), ["gpt-oss-120b", "gpt-oss-20b"], Requirements())
    assert _decisions([m.to_dict() for m in report.models]) == _decisions(LIVE["data"]["models"])
    assert [m.chosen.profile.name for m in report.models if m.chosen] == ["hopper-120b", "hopper-20b"]
