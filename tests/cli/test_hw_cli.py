"""`hw check` and `profiles list` through the real CLI: exit codes, JSON documents, messages."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FIXTURES

G = FIXTURES / "gpu"
H100 = G / "nvidia_gpu_exporter" / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__idle-query-gpu.csv"
SUPER = G / "nvidia_gpu_exporter" / "linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05__idle-query-gpu.csv"


def test_hw_check_fit_exits_0(cli) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("hw", "check", "--model", "gpt-oss-120b", "--nvidia-smi-csv", str(H100))
    assert code == 0 and doc["status"] == "ok"
    (m,) = doc["data"]["models"]
    assert (m["chosen"], m["tensor_parallel"]) == ("hopper-120b", 1)
    assert doc["data"]["inventory"]["gpus"][0]["memory_total_mib"] == 81559
    assert doc["data"]["inventory"]["host"] is None  # a capture says nothing about this host


def test_hw_check_no_fit_exits_1_with_reasons(cli) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("hw", "check", "--nvidia-smi-xml", str(G / "guancecloud-datakit" / "gtx-1card.xml"))
    assert code == 1 and doc["status"] == "failed"
    for m in doc["data"]["models"]:
        assert m["chosen"] is None and "no profile fits" in m["reason"]
        assert all(p["reasons"] for p in m["profiles"])


def test_hw_check_bad_capture_exits_2(cli) -> None:  # type: ignore[no-untyped-def]
    capture = G / "wandb" / "rocm-smi-a-json_MI250_1card__nexus-gpu_amd.go-comment.json"
    code, doc = cli("hw", "check", "--rocm-smi-json", str(capture))
    assert code == 2 and doc["error"]["code"] == "hw.capture_invalid"


def test_hw_check_unknown_model_exits_2(cli) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("hw", "check", "--model", "llama", "--nvidia-smi-csv", str(H100))
    assert code == 2 and doc["error"]["code"] == "hw.unknown_model"


def test_hw_check_live_here(cli) -> None:  # type: ignore[no-untyped-def]
    """The live path on this machine: NVML answers on a GPU host; elsewhere it is exit 3, never a pass."""
    code, doc = cli("hw", "check", "--model", "gpt-oss-20b")
    if doc["status"] == "error":
        assert code == 3 and doc["error"]["code"] == "hw.no_probe"
        assert "--nvidia-smi-xml" in doc["error"]["hint"]
    else:
        assert code in (0, 1) and doc["data"]["inventory"]["source"] in ("nvml", "amdsmi")


def test_hw_check_tiny_model_on_this_host(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("hw", "check", "--model", "tiny", "--prefix", str(tmp_path))
    assert code == 0
    (m,) = doc["data"]["models"]
    assert m["chosen"] == "cpu-tiny"
    ids = {c["id"] for c in m["checks"]}
    assert {"host.arch", "host.python", "host.ram", "host.disk"} <= ids


def test_profiles_list_explains_every_profile(cli) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("profiles", "list", "--model", "gpt-oss-20b", "--nvidia-smi-csv", str(SUPER))
    assert code == 0
    profiles = {p["profile"]: p for p in doc["data"]["models"][0]["profiles"]}
    assert profiles["16gb-20b"]["fits"] is True
    assert profiles["hopper-20b"]["fits"] is False and "sm_89" in profiles["hopper-20b"]["reasons"][0]
    assert "short by" in profiles["24gb-20b"]["reasons"][-1]


def test_hw_check_reads_the_bundle_model(cli, packed: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("hw", "check", "--bundle", str(packed), "--prefix", str(tmp_path))
    assert code == 0
    (m,) = doc["data"]["models"]
    # The bundle's own model, by its name and sized from its config.json (was the name "tiny", looked up by name).
    assert m["model"] == "gptossctl/tiny-gpt-oss" and m["chosen"] == "cpu-tiny"
    assert m["facts"]["class"] == "tiny" and m["facts"]["source"] == "bundle payload/model/config.json"
    assert doc["data"]["requirements"]["weights_bytes"] > 1_000_000


def test_hw_check_judges_the_bundles_own_profiles(cli, bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With --bundle, the profiles are the ones install would choose among: the bundle's (cpu-tiny only here),
    not every profile gptossctl ships (cpu-tiny-harmony would also fit this host)."""
    code, doc = cli("hw", "check", "--bundle", str(bundle), "--prefix", str(tmp_path))
    (m,) = doc["data"]["models"]
    assert code == 0 and [p["profile"] for p in m["profiles"]] == ["cpu-tiny"], m["profiles"]


def test_hw_check_refuses_a_bundle_profile_that_does_not_match_its_manifest(cli, bundle: Path,  # type: ignore[no-untyped-def]
                                                                            tmp_path: Path) -> None:
    (profile,) = (bundle / "payload" / "profiles").glob("*.yaml")
    profile.write_text(profile.read_text().replace("max-model-len: 2048", "max-model-len: 4096"))
    code, doc = cli("hw", "check", "--bundle", str(bundle), "--prefix", str(tmp_path))
    assert code == 1 and doc["error"]["code"] == "hw.bundle_damaged", doc["error"]
    assert "bundle verify" in doc["error"]["hint"]


def test_hw_check_says_a_reason_shared_by_eight_gpus_once() -> None:
    """Through the installed console script, in both outputs: 8x V100S, every profile refused for the same
    reason on every GPU; it is said once for GPU 0-7, and JSON keeps the GPU indexes."""
    import json
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("gptossctl")
    args = [str(exe), "hw", "check", "--model", "gpt-oss-20b", "--nvidia-smi-xml",
            str(G / "guancecloud-datakit" / "gtx-8card.xml")]
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    text = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert text.returncode == 1, text.stderr
    assert "GPU 0-7 (Tesla V100S-PCIE-32GB): sm_70, the profile needs sm_90" in text.stdout
    assert "GPU 1 " not in text.stdout and "GPU 7 " not in text.stdout and "Traceback" not in text.stderr
    res = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    (m,) = doc["data"]["models"]
    hopper = [p for p in m["profiles"] if p["profile"] == "hopper-20b"][0]
    assert {"gpus": list(range(8)), "message": "GPU 0-7 (Tesla V100S-PCIE-32GB): sm_70, the profile needs sm_90"} \
        in hopper["gpu_reasons"]
    (arch,) = [c for c in m["checks"] if c["id"] == "gpu.arch"]
    assert arch["gpus"] == list(range(8)) and arch["subject"] == "GPU 0-7 (Tesla V100S-PCIE-32GB)"
    assert [f["subject"] for f in doc["findings"]].count("GPU 0-7 (Tesla V100S-PCIE-32GB)") == 1
