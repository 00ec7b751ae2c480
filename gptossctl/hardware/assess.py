"""One call for `hw check` and `profiles list`: gather the inputs, probe, and match every profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gptossctl.errors import UsageError
from gptossctl.hardware.check import HardwareReport, Requirements, check_models, requirements_from_manifest
from gptossctl.hardware.inventory import Inventory
from gptossctl.hardware.layout import NO_OVERRIDES, LayoutRequest
from gptossctl.hardware.profiles import load_profiles
from gptossctl.hardware.requirements import KNOWN_MODELS, model_key

GPU_MODELS = ("gpt-oss-120b", "gpt-oss-20b")
DEFAULT_PREFIX = Path("/opt/gptoss")


@dataclass(frozen=True)
class Captures:
    nvidia_smi_xml: Path | None = None
    nvidia_smi_csv: Path | None = None
    rocm_smi_json: Path | None = None
    amd_smi_json: Path | None = None


def resolve_models(model: str | None, bundle_model: str | None) -> list[str]:
    if model:
        key = model_key(model)
        if key is None:
            raise UsageError(f"unknown model {model!r}", code="hw.unknown_model",
                             hint=f"use one of {', '.join(KNOWN_MODELS)}")
        return [key]
    if bundle_model:
        return [bundle_model]
    return list(GPU_MODELS)  # no model named: say what this machine can serve, of both


def assess(*, model: str | None = None, bundle: Path | None = None, captures: Captures = Captures(),
           disk_paths: Sequence[Path] | None = None, inventory: Inventory | None = None,
           layout: LayoutRequest = NO_OVERRIDES) -> HardwareReport:
    req, bundle_model = Requirements(), None
    if bundle is not None:
        from gptossctl.bundle.sign import inspect_bundle

        req, bundle_model = requirements_from_manifest(inspect_bundle(bundle).manifest)
    models = resolve_models(model, bundle_model)
    if inventory is None:
        from gptossctl.hardware.probes import probe_capture, probe_live

        inventory = probe_capture(**captures.__dict__)
        if inventory is None:
            paths = list(disk_paths) if disk_paths is not None else [DEFAULT_PREFIX]
            inventory = probe_live(host_paths=paths, gpu_required=any(m != "tiny" for m in models))
    return check_models(inventory, load_profiles(), models, req, layout)
