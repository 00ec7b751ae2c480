"""Signed content never grants privilege: a profile's environment is an allowlist of exact names, its vLLM
flags are vLLM's own option names spelled in full, and flags that open the network or load code stay the
installer's (or nobody's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptossctl.errors import UsageError
from gptossctl.hardware.profiles import PROFILE_ENV, load_profile

REPO = Path(__file__).resolve().parents[2]
# Each makes a library or the interpreter load code (or certificates, or config) from a place of its choosing.
CODE_LOADING_ENV = ["NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "PYTHONPYCACHEPREFIX", "TRITON_LIBCUDA_PATH", "LD_AUDIT",
                    "OPENSSL_CONF", "HF_MODULES_CACHE", "SSL_CERT_FILE", "TORCHINDUCTOR_CACHE_DIR",
                    "TRITON_HOME", "HSA_TOOLS_LIB", "CUDA_INJECTION64_PATH", "ROCR_VISIBLE_DEVICES",
                    "CUDA_VISIBLE_DEVICES", "VLLM_PLUGINS", "vllm_cpu_kvcache_space"]


def _load(tmp_path: Path, old: str, new: str, name: str = "hopper-20b") -> UsageError | None:
    text = (REPO / "profiles" / f"{name}.yaml").read_text()
    assert old in text
    p = tmp_path / f"{name}.yaml"
    p.write_text(text.replace(old, new))
    try:
        load_profile(p)
    except UsageError as exc:
        assert exc.code == "profile.invalid"
        return exc
    return None


@pytest.mark.parametrize("name", CODE_LOADING_ENV)
def test_environment_outside_the_allowlist_is_refused(tmp_path: Path, name: str) -> None:
    e = _load(tmp_path, "env: {}\n", f"env:\n    {name}: /tmp/x\n")
    assert e is not None, f"{name} was accepted"
    assert name in (e.hint or "") and "PROFILE_ENV" in (e.hint or "")


def test_every_allowlisted_name_is_accepted_with_a_plain_value(tmp_path: Path) -> None:
    special = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "VLLM_SYSTEM_START_DATE": "2025-08-05", "VLLM_LOGGING_LEVEL": "INFO",
               "CUDA_MODULE_LOADING": "LAZY", "NCCL_DEBUG": "WARN"}
    for name in PROFILE_ENV:
        value = special.get(name, "1")
        assert _load(tmp_path, "env: {}\n", f'env:\n    {name}: "{value}"\n') is None, name


def test_an_allowlisted_toggle_takes_only_its_values(tmp_path: Path) -> None:
    e = _load(tmp_path, "env: {}\n", 'env:\n    VLLM_ROCM_USE_AITER: "/tmp/evil.so"\n')
    assert e is not None and "VLLM_ROCM_USE_AITER" in (e.hint or "")
    e = _load(tmp_path, "env: {}\n", 'env:\n    CUDA_DEVICE_ORDER: "FASTEST_FIRST"\n')
    assert e is not None and "CUDA_DEVICE_ORDER" in (e.hint or "")


@pytest.mark.parametrize("flag,near", [("max-model", "max-model-len"), ("gpu-memory-util", "gpu-memory-utilization"),
                                       ("enable-prefix-cache", "enable-prefix-caching"), ("no-such-flag", None)])
def test_abbreviated_or_unknown_flag_is_refused_with_the_nearest_names(tmp_path: Path, flag: str,
                                                                       near: str | None) -> None:
    e = _load(tmp_path, "    max-num-batched-tokens:", f"    {flag}: 1\n    max-num-batched-tokens:")
    assert e is not None, f"{flag} was accepted"
    assert repr(flag) in (e.hint or "") and "0.33" in (e.hint or "")
    if near:
        assert near in (e.hint or "")


@pytest.mark.parametrize("flag", ["ssl-keyfile", "allowed-origins", "middleware", "tool-parser-plugin",
                                  "logits-processors", "trust-remote-code", "uds", "root-path",
                                  "chat-template", "enable-log-requests", "grpc"])
def test_flags_that_open_the_network_or_load_code_are_reserved(tmp_path: Path, flag: str) -> None:
    e = _load(tmp_path, "    max-num-batched-tokens:", f"    {flag}: x\n    max-num-batched-tokens:")
    assert e is not None, f"{flag} was accepted"
    assert repr(flag) in (e.hint or "")


def test_a_profile_for_vllm_versions_no_list_covers_is_refused(tmp_path: Path) -> None:
    e = _load(tmp_path, 'versions: ">=0.33.0,<0.34"', 'versions: ">=0.40,<0.41"')
    assert e is not None and "scripts/vllm_flags.py" in (e.hint or "")
