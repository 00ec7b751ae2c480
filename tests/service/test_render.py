"""Rendered units graded by the real systemd-analyze: verify clean, exposure at most 2.0, for every
vendor and tensor-parallel shape the installer can render."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptossctl.errors import UsageError
from gptossctl.hardware.profiles import load_profiles
from gptossctl.install.render import UnitInputs, render_env, render_unit, render_vllm_config
from gptossctl.resources import data_dir

TEMPLATE = (data_dir("systemd") / "gptoss@.service").read_text()
SHAPES = {
    "nvidia-tp1": UnitInputs(Path(sys.executable), Path("/etc/gptoss/x.env"), Path("/etc/gptoss/x.yaml"),
                             Path("/opt/gptoss/releases/1"), "nvidia", (0,), 1),
    "nvidia-tp2-mig": UnitInputs(Path(sys.executable), Path("/etc/gptoss/x.env"), Path("/etc/gptoss/x.yaml"),
                                 Path("/opt/gptoss/releases/1"), "nvidia", (0, 1), 2, mig=True),
    "amd": UnitInputs(Path(sys.executable), Path("/etc/gptoss/x.env"), Path("/etc/gptoss/x.yaml"),
                      Path("/opt/gptoss/releases/1"), "amd", (0,), 1),
    "cpu": UnitInputs(Path(sys.executable), Path("/etc/gptoss/x.env"), Path("/etc/gptoss/x.yaml"),
                      Path("/opt/gptoss/releases/1"), "cpu"),
}


def _unit(tmp_path: Path, shape: str) -> Path:
    path = tmp_path / "gptoss@test.service"
    path.write_text(render_unit(TEMPLATE, SHAPES[shape]))
    return path


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_unit_has_no_placeholders_and_binds_nothing_wide(tmp_path: Path, shape: str) -> None:
    text = _unit(tmp_path, shape).read_text()
    assert "{{" not in text and "}}" not in text
    assert "IPAddressDeny=any" in text and "IPAddressAllow=localhost" in text
    directives = [ln.split("=", 1)[0] for ln in text.splitlines() if "=" in ln and not ln.startswith("#")]
    assert "PrivateDevices" not in directives and "MemoryDenyWriteExecute" not in directives
    assert ("PrivateIPC=yes" in text) == (SHAPES[shape].tensor_parallel == 1)
    assert "api-key" not in text.lower() and "VLLM_API_KEY" not in text


def test_device_rules_follow_the_vendor(tmp_path: Path) -> None:
    nv = _unit(tmp_path, "nvidia-tp2-mig").read_text()
    assert "DeviceAllow=/dev/nvidia0 rw" in nv and "DeviceAllow=/dev/nvidia1 rw" in nv and "nvidia-caps" in nv
    amd = _unit(tmp_path, "amd").read_text()
    assert "DeviceAllow=/dev/kfd rw" in amd and "renderD128" in amd and "SupplementaryGroups=render video" in amd
    cpu = _unit(tmp_path, "cpu").read_text()
    assert "DeviceAllow" not in cpu and "SupplementaryGroups" not in cpu


@pytest.mark.parametrize("shape", SHAPES)
def test_systemd_analyze_verify_is_clean(tmp_path: Path, shape: str) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is required (Debian package systemd)"
    unit = _unit(tmp_path, shape)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if str(unit.name) in ln or "gptoss" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


@pytest.mark.parametrize("shape", SHAPES)
def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path, shape: str) -> None:
    unit = _unit(tmp_path, shape)
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.0, res.stdout


def test_env_file_carries_the_offline_variables_and_the_key() -> None:
    hopper = {p.name: p for p in load_profiles()}["blackwell-120b"]
    text = render_env(api_key="k" * 43, instance="main", release_dir=Path("/opt/gptoss/releases/7"),
                      profile_env=hopper.vllm.env, state_dir=Path("/var/lib/gptoss/main"),
                      cache_dir=Path("/var/cache/gptoss/main"), vocab=True)
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_DISABLE_TELEMETRY"):
        assert env[k] == "1"
    assert env["VLLM_API_KEY"] == "k" * 43 and env["VLLM_HAS_FLASHINFER_CUBIN"] == "1"
    assert env["TIKTOKEN_ENCODINGS_BASE"] == "/opt/gptoss/releases/7/payload/assets/tiktoken"
    assert env["VLLM_CACHE_ROOT"].startswith("/var/cache/gptoss/main")
    with pytest.raises(UsageError):
        render_env(api_key="short", instance="main", release_dir=Path("/x"), profile_env={},
                   state_dir=Path("/s"), cache_dir=Path("/c"), vocab=True)


def test_the_vocab_directory_is_named_only_when_the_release_ships_it() -> None:
    """oss-harmony reads TIKTOKEN_ENCODINGS_BASE whenever it is set and fails when the file is not there."""
    text = render_env(api_key="k" * 43, instance="main", release_dir=Path("/opt/gptoss/releases/7"), profile_env={},
                      state_dir=Path("/s"), cache_dir=Path("/c"), vocab=False)
    assert "TIKTOKEN_ENCODINGS_BASE" not in text


def test_vllm_config_binds_loopback_and_keeps_the_profile() -> None:
    p = {p.name: p for p in load_profiles()}["hopper-120b"]
    doc = yaml.safe_load(render_vllm_config(p.vllm_config(tensor_parallel=1), model_dir=Path("/opt/m"),
                                            served_name="openai/gpt-oss-120b", port=8000))
    assert doc["host"] == "127.0.0.1" and doc["port"] == 8000 and doc["model"] == "/opt/m"
    assert doc["served-model-name"] == "openai/gpt-oss-120b" and doc["gpu-memory-utilization"] == 0.95
    assert "api-key" not in doc
