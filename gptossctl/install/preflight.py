"""Before anything is written: will this host serve the bundle, and with which of its signed profiles?

`assess` is `hw check` and `profiles list`: probe the GPUs (live or from a capture), read what the bundle asks
(CUDA line, weights, vLLM version) and match every profile. `preflight` is the same judgement inside install,
over the bundle's own profiles, each read once and checked against its signed digest before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptossctl.adapters.gpus import Captures, probe_capture, probe_live
from gptossctl.adapters.host import missing_libraries
from gptossctl.adapters.nginx import find_nginx
from gptossctl.bundle.manifest import Manifest
from gptossctl.bundle.sign import inspect_bundle
from gptossctl.bundle.verify import VerifiedBundle
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, UsageError
from gptossctl.fsutil import DuplicateKey, decode_text, read_bytes, refuse_duplicate_keys
from gptossctl.hardware.catalogue import Catalogue, profile_catalogue
from gptossctl.hardware.check import (
    Check,
    HardwareReport,
    ProfileFit,
    Requirements,
    check_models,
    requirements_from_manifest,
)
from gptossctl.hardware.inventory import Inventory
from gptossctl.hardware.layout import NO_OVERRIDES, LayoutRequest
from gptossctl.hardware.modelfacts import PUBLISHED, ModelFacts, facts_from_config, loaded_weights_bytes, published_key
from gptossctl.hardware.profiles import Profile, load_profiles, profile_from_text
from gptossctl.install.layout import Layout
from gptossctl.install.releases import prune_advice
from gptossctl.install.unpack import UNPACK_MARGIN

GPU_MODELS = ("gpt-oss-120b", "gpt-oss-20b")
DEFAULT_PREFIX = Path("/opt/gptoss")


def resolve_models(model: str | None, bundle_model: ModelFacts | None) -> list[ModelFacts]:
    """The bundle's own model (sized from its config.json); else the published model named; else both."""
    key = published_key(model) if model else None
    if model and key is None and bundle_model is None:
        raise UsageError(f"unknown model {model!r}", code="hw.unknown_model",
                         hint=f"use one of {', '.join(PUBLISHED)}, or give --bundle to judge a bundle's own model")
    if bundle_model is not None:
        if model and (key is None or PUBLISHED[key].model_class != bundle_model.model_class):
            raise UsageError(f"--model {model!r} is not the bundle's model ({bundle_model.name}, "
                             f"{bundle_model.model_class})", code="hw.model_mismatch",
                             hint="leave --model out: with --bundle, the bundle's own model is judged")
        return [bundle_model]
    if key is not None:
        return [PUBLISHED[key]]
    return [PUBLISHED[m] for m in GPU_MODELS]  # no model named: say what this machine can serve, of both


def _inputs(model: str | None, bundle: Path | None) -> tuple[Requirements, list[ModelFacts], list[Profile]]:
    """What is judged: the bundle's requirements, model and profiles (read against its manifest; install
    verifies), or the published models and gptossctl's shipped profiles."""
    req, bundle_model, profiles = Requirements(), None, None
    if bundle is not None:
        manifest = inspect_bundle(bundle).manifest
        req = requirements_from_manifest(manifest)
        bundle_model = bundle_model_facts(bundle, manifest, code="hw.bundle_damaged")
        # The profiles install would choose among: the bundle's own (read against its manifest; install verifies).
        profiles = bundle_profiles(bundle, manifest, code="hw.bundle_damaged")
    models = resolve_models(model, bundle_model)
    return req, models, profiles if profiles is not None else load_profiles()


def assess(*, model: str | None = None, bundle: Path | None = None, captures: Captures = Captures(),
           disk_paths: Sequence[Path] | None = None, inventory: Inventory | None = None,
           layout: LayoutRequest = NO_OVERRIDES) -> HardwareReport:
    req, models, profiles = _inputs(model, bundle)
    if inventory is None:
        inventory = probe_capture(captures)
        if inventory is None:
            paths = list(disk_paths) if disk_paths is not None else [DEFAULT_PREFIX]
            inventory = probe_live(host_paths=paths, gpu_required=any(m.model_class != "tiny" for m in models))
    return check_models(inventory, profiles, models, req, layout)


def list_profiles(*, model: str | None = None, bundle: Path | None = None, captures: Captures = Captures(),
                  disk_paths: Sequence[Path] | None = None,
                  layout: LayoutRequest = NO_OVERRIDES) -> HardwareReport | Catalogue:
    """`profiles list`: with a probe (or a capture), the judgement `assess` makes; on a machine where no GPU
    probe can run (the connected workstation that packs), the catalogue: every profile and what it needs."""
    try:
        return assess(model=model, bundle=bundle, captures=captures, disk_paths=disk_paths, layout=layout)
    except EnvironmentNotReady as exc:
        if exc.code != "hw.no_probe":
            raise
        _req, models, profiles = _inputs(model, bundle)
        return profile_catalogue(profiles, models if (model or bundle) else list(PUBLISHED.values()),
                                 why=exc.message)


MODEL_CONFIG = "model/config.json"


def bundle_model_facts(root: Path, manifest: Manifest, *, code: str) -> ModelFacts:
    """The bundle's model as its signed config.json and weight files say: read once, checked against the
    manifest's digest before it is parsed; the weight bytes are the manifest's."""
    entry = next((f for f in manifest.files if f.component == "model" and f.path == MODEL_CONFIG), None)
    model = manifest.components.get("model", {})
    name = str(model.get("name") or manifest.name)
    where = f"payload/{MODEL_CONFIG}"
    if entry is None:
        raise CheckFailed(f"the bundle carries no {where}: gptossctl sizes a model from its config",
                          code="model.config_missing", findings=[Finding("model.config_missing", where, "not packed")],
                          hint="pack the model with its config.json (the recipe's model.required lists it by default)")
    path = root / "payload" / MODEL_CONFIG
    data = read_bytes(path, what="model config", code=code, limit=max(entry.size + 1, 4 << 20))
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CheckFailed(f"{path} does not match the bundle's signed manifest", code=code,
                          findings=[Finding("bundle.digest_mismatch", where,
                                            "changed since the bundle was signed, or since it was verified")],
                          hint="protect the bundle from writers (read-only media), check it with "
                               "'gptossctl bundle verify', and try again")
    problem = None
    try:
        doc: Any = json.loads(decode_text(data, path=path, what="model config"), object_pairs_hook=refuse_duplicate_keys)
    except (DuplicateKey, RecursionError, ValueError) as exc:
        problem = f"is not JSON ({exc.__class__.__name__}: {str(exc)[:120]})"
    else:
        problem = None if isinstance(doc, dict) else "is not a JSON object"
    if problem:
        raise CheckFailed(f"{where} {problem}", code="model.config_invalid",
                          findings=[Finding("model.config_invalid", where, problem)],
                          hint="pack the model's own config.json, as its repository publishes it")
    weights = loaded_weights_bytes(manifest.files)
    return facts_from_config(doc, name=name, weights_bytes=weights, source=f"bundle {where}")


def verified_profiles(bundle: VerifiedBundle) -> list[Profile]:
    """The bundle's own (signed) profiles, each read once and checked against its signed digest before it is
    parsed: a profile swapped after verification is refused, never used."""
    return bundle_profiles(bundle.root, bundle.manifest, code="install.bundle_changed")


def bundle_profiles(root: Path, manifest: Manifest, *, code: str) -> list[Profile]:
    """The profiles a bundle ships, each read once and parsed only if it matches the manifest's digest. A bundle
    with none falls back to gptossctl's shipped profiles."""
    entries = [f for f in manifest.files if f.component == "profiles"]
    if not entries:
        return load_profiles()
    out = []
    for f in entries:
        path = root / "payload" / f.path
        data = read_bytes(path, what="profile", code=code, limit=max(f.size + 1, 4 << 20))
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            raise CheckFailed(f"{path} does not match the bundle's signed manifest", code=code,
                              findings=[Finding("bundle.digest_mismatch", f"payload/{f.path}",
                                                "changed since the bundle was signed, or since it was verified")],
                              hint="protect the bundle from writers (read-only media), check it with "
                                   "'gptossctl bundle verify', and try again")
        out.append(profile_from_text(decode_text(data, path=path, what="profile"), path))
    return out


def preflight(bundle: VerifiedBundle, layout: Layout, *, profile: str, captures: Captures,
              request: LayoutRequest = NO_OVERRIDES) -> ProfileFit:
    """The profile this host serves the bundle with, chosen among the bundle's own signed profiles, and the
    replicas it runs (every GPU that holds one, or what --replicas/--tp ask within that)."""
    requirements = requirements_from_manifest(bundle.manifest)
    # Sized from the model's own signed config.json: any gpt-oss or fine-tune of one, under any name.
    model = bundle_model_facts(bundle.root, bundle.manifest, code="install.bundle_changed")
    inventory = probe_capture(captures)
    if inventory is None:
        probe_at = layout.base if layout.base.exists() else layout.root
        inventory = probe_live(host_paths=[probe_at], gpu_required=model.model_class != "tiny")
    profiles = verified_profiles(bundle)
    if profile != "auto":
        profiles = [p for p in profiles if p.name == profile]
        if not profiles:
            raise UsageError(f"profile {profile!r} is not in the bundle", code="install.unknown_profile",
                             hint="see 'gptossctl bundle inspect' for the bundle's profiles, or use --profile auto")
    report = check_models(inventory, profiles, [model], requirements, request)
    (m,) = report.models
    if m.chosen is None:
        failed = [Finding(f"preflight.{c.id}", c.subject, c.message) for c in m.checks if c.status == "fail"]
        failed += [Finding("preflight.profile", f.profile.name, "; ".join(f.reasons)) for f in m.fits]
        prune = _prune_finding(layout, inventory, bundle.manifest.total_size, m.checks)
        raise CheckFailed(f"preflight failed: {m.reason}", code="install.preflight_failed", findings=failed + prune,
                          hint=(prune[0].message + "; " if prune else "")
                          + "run 'gptossctl hw check --bundle BUNDLE' for the full report")
    return m.chosen


def _prune_finding(layout: Layout, inventory: Inventory, size: int, checks: Sequence[Check]) -> list[Finding]:
    """Disk too short for the release: what `releases prune` would free here (install/releases.py computes it
    from the trees), counting the room unpack keeps beyond the payload."""
    if inventory.host is None or not any(c.id == "host.disk" and c.status == "fail" for c in checks):
        return []
    free = min(inventory.host.disk_free_bytes.values(), default=0)
    advice = prune_advice(layout, size + UNPACK_MARGIN - free)
    return [Finding("preflight.prune", str(layout.live_path(layout.releases)), advice)] if advice else []


def check_router(root: Path) -> Path:
    """The router (nginx from the OS) is in front of every instance: its path as the target sees it."""
    nginx = find_nginx(root)
    if nginx is None:
        raise EnvironmentNotReady("every instance is served through the router, nginx, which this host lacks",
                                  code="install.no_router",
                                  findings=[Finding("preflight.router", "nginx", "not found in /usr/sbin or /usr/bin")],
                                  hint="install the distribution's nginx from your OS mirror: nginx-light (Debian, "
                                       "Ubuntu) or nginx (RHEL, Fedora), then run the install again")
    return nginx


HOST_LIBRARIES = {"cpu": (("libnuma.so.1", "libnuma1 (Debian/Ubuntu) or numactl-libs (RHEL)"),)}

def check_host_libraries(vendor: str) -> str:
    wanted = HOST_LIBRARIES.get(vendor, ())
    absent = set(missing_libraries([lib for lib, _p in wanted]))
    missing = [(lib, package) for lib, package in wanted if lib in absent]
    if missing:
        raise CheckFailed(f"this host lacks {', '.join(m[0] for m in missing)}, which vLLM loads at start",
                          code="install.host_library_missing",
                          findings=[Finding("preflight.library", lib, f"install {pkg}") for lib, pkg in missing],
                          hint="install " + "; ".join(pkg for _lib, pkg in missing) + " from your local mirror")
    names = [lib for lib, _p in HOST_LIBRARIES.get(vendor, ())]
    return f"{', '.join(names)} present" if names else "none needed beyond the bundle"
