"""Render the hardened unit, the 0600 environment file and the `vllm serve --config` file. Pure functions
(but `unit_template`, which reads gptossctl's own template: never a bundle's, see install/units.py).

vLLM always binds the loopback address: its API key guards /v1 only (/invocations answers without
one), so anything exposed beyond the host goes through an allowlisting TLS proxy, never to vLLM itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gptossctl.errors import UsageError
from gptossctl.install.layout import Layout
from gptossctl.install.release import CONFIG, ENV_FILE, LOOPBACK
from gptossctl.install.units import VLLM_FILLED, VLLM_TEMPLATE, check_directives, own_template
from gptossctl.templates import check_python, fill_template

if TYPE_CHECKING:
    from gptossctl.bundle.manifest import Manifest
    from gptossctl.hardware.profiles import Profile

VOCAB_DIR = "assets/tiktoken"  # where a bundle ships the harmony vocab (pack.assets)

# What must never leave the host and what must never be fetched at run time (REFERENCE.md).
OFFLINE_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
}

# What the service's Python must not import from: the user site under HOME (the state directory, which the
# service writes: a .pth there would run at every start) and the working directory or the script's directory.
ISOLATION_ENV: Mapping[str, str] = {"PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1"}

# A path written into ExecStart= verbatim: a newline would add directives (User=root), whitespace would split
# the command, and systemd expands %, $, quotes and backslash escapes there.


@dataclass(frozen=True)
class UnitInputs:
    python: Path
    env_file: Path
    config_file: Path
    release_dir: Path
    vendor: Literal["nvidia", "amd", "cpu"]
    gpus: tuple[int, ...] = ()
    tensor_parallel: int = 1
    mig: bool = False


def _devices(inp: UnitInputs) -> tuple[list[str], list[str]]:
    if inp.vendor == "nvidia":
        lines = [f"DeviceAllow={d} rw" for d in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")]
        lines += [f"DeviceAllow=/dev/nvidia{i} rw" for i in inp.gpus]
        if inp.mig:
            lines.append("DeviceAllow=char-nvidia-caps r")  # MIG capability devices
        return lines, []
    if inp.vendor == "amd":
        lines = ["DeviceAllow=/dev/kfd rw"] + [f"DeviceAllow=/dev/dri/renderD{128 + i} rw" for i in inp.gpus]
        return lines, ["render", "video"]
    return [], []


def render_unit(template: str, inp: UnitInputs) -> str:
    if inp.vendor != "cpu" and not inp.gpus:
        raise UsageError("a GPU service needs its GPU indices", code="service.no_gpus")
    devices, groups = _devices(inp)
    check_python(inp.python, option="the recorded interpreter")  # compliance renders from the record again
    values = {
        "python": str(inp.python),
        "env_file": str(inp.env_file),
        "config_file": str(inp.config_file),
        "release_dir": str(inp.release_dir),
        "groups": " ".join(groups),
        "ip_allow": "IPAddressAllow=localhost",
        "device_allow": "\n".join(devices),
        # Tensor-parallel workers share memory through System V IPC: private IPC only at TP 1.
        "private_ipc": "PrivateIPC=yes" if inp.tensor_parallel == 1 else "",
    }
    text = fill_template(template, values, lines=("device_allow",))
    lines = [ln for ln in text.splitlines() if ln.strip() != "SupplementaryGroups="]
    unit = "\n".join(ln for i, ln in enumerate(lines) if ln.strip() or (i and lines[i - 1].strip())) + "\n"
    return check_directives(unit, template, VLLM_TEMPLATE, filled=VLLM_FILLED)


def render_env(*, api_key: str, instance: str, release_dir: Path, profile_env: Mapping[str, str],
               state_dir: Path, cache_dir: Path, vocab: bool) -> str:
    """The environment file (installed 0600): the key lives here, never in argv or the unit. `vocab`: the
    release ships the harmony vocab (assets/tiktoken); only then may TIKTOKEN_ENCODINGS_BASE point there
    (oss-harmony reads that directory whenever the variable is set, and fails if the file is not in it)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]{32,}", api_key):
        raise UsageError("API key must be 32+ URL-safe characters", code="service.weak_key")
    env: dict[str, str] = {
        **OFFLINE_ENV,
        **ISOLATION_ENV,
        "VLLM_API_KEY": api_key,
        "HOME": str(state_dir),
        "HF_HOME": str(cache_dir / "huggingface"),
        "XDG_CACHE_HOME": str(cache_dir),
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "FLASHINFER_WORKSPACE_BASE": str(cache_dir / "flashinfer"),
    }
    if vocab:
        env["TIKTOKEN_ENCODINGS_BASE"] = str(release_dir / "payload" / VOCAB_DIR)
    for k, v in profile_env.items():
        if k in env:
            raise UsageError(f"profile sets {k}, which the installer owns", code="service.env_conflict")
        env[k] = v
    for k, v in env.items():
        if "\n" in v or '"' in v:
            raise UsageError(f"environment value for {k} has a newline or quote", code="service.bad_env")
    return f"# gptoss@{instance}: written by gptossctl; mode 0600, owner root\n" + \
        "".join(f"{k}={v}\n" for k, v in env.items())


def render_vllm_config(profile_config: Mapping[str, Any], *, model_dir: Path, served_name: str, port: int) -> str:
    """The `vllm serve --config` YAML: the profile's flags plus what the installer owns."""
    import yaml

    if not 1024 <= port <= 65535:
        raise UsageError(f"port {port} is outside 1024-65535", code="service.bad_port")
    doc = {"model": str(model_dir), "served-model-name": served_name, "host": LOOPBACK, "port": port,
           **profile_config}
    return yaml.safe_dump(doc, sort_keys=False)


def unit_template() -> str:
    """The vLLM unit template: gptossctl's own, whatever the bundle ships (install/units.py)."""
    return own_template(VLLM_TEMPLATE)


def ships_vocab(manifest: Manifest) -> bool:
    return any(f.path.startswith(VOCAB_DIR + "/") for f in manifest.files)


def render_release(template: str, profile: Profile, layout: Layout, release_live: Path, python_live: Path,
                   api_key: str, *, port: int, gpus: tuple[int, ...], tensor_parallel: int,
                   served: str, vocab: bool, files: tuple[str, str] = (CONFIG, ENV_FILE),
                   replica: bool = False) -> dict[str, str]:
    """The unit, config and environment of one release, as text, with paths as the booted host sees them.
    Pure: `compliance check` renders again from the same recorded inputs and compares. A replica (one of
    several) names its own files, and its `layout` is the replica's (state and cache follow the unit's %i)."""
    config_name, env_name = files
    unit = render_unit(template, UnitInputs(
        python=python_live, env_file=release_live / env_name, config_file=release_live / config_name,
        release_dir=release_live, vendor=profile.match.vendor, gpus=gpus, tensor_parallel=tensor_parallel))
    config = render_vllm_config(profile.vllm_config(tensor_parallel=tensor_parallel),
                                model_dir=release_live / "payload" / "model", served_name=served, port=port)
    env = render_env(api_key=api_key, instance=layout.instance, release_dir=release_live,
                     profile_env=dict(profile.vllm.env), state_dir=layout.live_path(layout.state),
                     cache_dir=layout.live_path(layout.cache), vocab=vocab)
    if replica:
        env += pin_devices(profile.match.vendor, gpus, profile_env=profile.vllm.env)
    elif gpus and profile.match.vendor == "nvidia":
        env += f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))}\n"
    return {"unit": unit, "config": config, "env": env}


def pin_devices(vendor: str, gpus: tuple[int, ...], *, profile_env: Mapping[str, str] = {}) -> str:  # noqa: B006
    """A replica sees only its GPUs. Indices are nvidia-smi's (PCI bus order), so CUDA is told to count in that
    order too: its default (fastest first) can number a mixed host differently. CPU replicas share the cores:
    vLLM's automatic thread binding would pin every replica's worker to the same core, where a busy replica
    starved the start of another (seen: a restarted replica's worker got no CPU time for minutes), so the
    kernel places their threads instead (unless the profile says how)."""
    devices = ",".join(map(str, gpus))
    if vendor == "nvidia" and gpus:  # a profile may say PCI_BUS_ID too (the only value its allowlist takes)
        order = "" if "CUDA_DEVICE_ORDER" in profile_env else "CUDA_DEVICE_ORDER=PCI_BUS_ID\n"
        return f"{order}CUDA_VISIBLE_DEVICES={devices}\n"
    if vendor == "amd" and gpus:
        return f"HIP_VISIBLE_DEVICES={devices}\n"
    if vendor == "cpu" and "VLLM_CPU_OMP_THREADS_BIND" not in profile_env:
        return "VLLM_CPU_OMP_THREADS_BIND=nobind\n"
    return ""
