"""The live NVML path on a real NVIDIA GPU, checked against `nvidia-smi` read at the same moment.

These need a GPU host, so CI (no GPU) does not collect this folder: `scripts/test.sh` runs `tests/`
without `tests/gpu`. On a GPU host run `python -m pytest tests/gpu` (see README, "Tests on a GPU host").
Each test fails, never skips, when there is no GPU: running them where none is would be a mistake.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gptossctl.adapters.captures import parse_nvidia_smi_csv, parse_nvidia_smi_xml
from gptossctl.adapters.nvml import probe_nvml
from gptossctl.hardware.check import Requirements, check_models
from gptossctl.hardware.profiles import load_profiles

CSV_FIELDS = ("index,name,memory.total,memory.free,compute_cap,driver_version,mig.mode.current,"
              "persistence_mode,pci.bus_id,uuid")


def _smi(*args: str) -> str:
    exe = shutil.which("nvidia-smi")
    assert exe, "tests/gpu runs only on an NVIDIA GPU host (nvidia-smi not found)"
    return subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("smi")
    xml = d / "nvidia-smi-q.xml"
    xml.write_text(_smi("-q", "-x"))
    csv = d / "query-gpu.csv"
    csv.write_text(_smi(f"--query-gpu={CSV_FIELDS}", "--format=csv"))
    return {"xml": xml, "csv": csv}


def test_nvml_matches_nvidia_smi(captures: dict[str, Path]) -> None:
    live = probe_nvml()
    assert live.source == "nvml" and live.gpus, "NVML answered with no GPU"
    for cap in (parse_nvidia_smi_xml(captures["xml"]), parse_nvidia_smi_csv(captures["csv"])):
        assert live.driver_version == cap.driver_version
        assert len(live.gpus) == len(cap.gpus)
        for a, b in zip(live.gpus, cap.gpus, strict=True):
            assert (a.name, a.uuid, a.memory_total_mib) == (b.name, b.uuid, b.memory_total_mib)
            assert a.compute_capability == b.compute_capability
            assert a.mig_enabled == b.mig_enabled
            assert a.pci_bus_id is not None and b.pci_bus_id is not None
            assert a.pci_bus_id.lower().endswith(b.pci_bus_id.lower()[-12:])
    # The driver's CUDA line as NVML says it is what nvidia-smi -q -x prints.
    assert live.cuda_driver_version == parse_nvidia_smi_xml(captures["xml"]).cuda_driver_version


def test_live_verdicts_agree_with_the_capture_review(captures: dict[str, Path]) -> None:
    """Reviewing a capture of this host decides exactly as running on it (the air-gap workflow)."""
    profiles = load_profiles()
    models = ["gpt-oss-20b", "gpt-oss-120b"]
    live = check_models(probe_nvml(), profiles, models, Requirements())
    review = check_models(parse_nvidia_smi_xml(captures["xml"]), profiles, models, Requirements())

    def decisions(report):  # type: ignore[no-untyped-def]
        return [(m.model, [(f.profile.name, f.fits, f.tensor_parallel) for f in m.fits]) for m in report.models]

    assert decisions(live) == decisions(review)


def test_hw_check_cli_live(cli) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("hw", "check")
    assert doc["data"]["inventory"]["source"] == "nvml"
    gpus = doc["data"]["inventory"]["gpus"]
    assert gpus and all(g["memory_total_mib"] > 0 for g in gpus)
    # Whatever fits, the answer is a decision with reasons: exit 0 with a chosen profile or 1 with none.
    for m in doc["data"]["models"]:
        assert (code == 0) or m["chosen"] is None
        assert all(p["reasons"] for p in m["profiles"] if not p["fits"])
