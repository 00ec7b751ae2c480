"""Before anything is written: will this host serve the bundle, and with which of its signed profiles?

`assess` is `hw check` and `profiles list`: probe the GPUs (live or from a capture), read what the bundle asks
(CUDA line, weights, vLLM version) and match every profile. `preflight` is the same judgement inside install,
over the bundle's own profiles, each read once and checked against its signed digest before it is parsed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from gptossctl.adapters.gpus import Captures, probe_capture, probe_live
from gptossctl.adapters.host import missing_libraries
from gptossctl.adapters.nginx import find_nginx
from gptossctl.bundle.manifest import Manifest
from gptossctl.bundle.sign import inspect_bundle
from gptossctl.bundle.verify import VerifiedBundle
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, UsageError
from gptossctl.fsutil import decode_text, read_bytes
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
from gptossctl.hardware.profiles import Profile, load_profiles, profile_from_text
from gptossctl.hardware.requirements import KNOWN_MODELS, model_key
from gptossctl.install.layout import Layout
from gptossctl.install.release import served_name
from gptossctl.install.releases import prune_advice
from gptossctl.install.unpack import UNPACK_MARGIN

GPU_MODELS = ("gpt-oss-120b", "gpt-oss-20b")
DEFAULT_PREFIX = Path("/opt/gptoss")


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
    req, bundle_model, profiles = Requirements(), None, None
    if bundle is not None:
        manifest = inspect_bundle(bundle).manifest
        req, bundle_model = requirements_from_manifest(manifest)
        # The profiles install would choose among: the bundle's own (read against its manifest; install verifies).
        profiles = bundle_profiles(bundle, manifest, code="hw.bundle_damaged")
    models = resolve_models(model, bundle_model)
    if inventory is None:
        inventory = probe_capture(captures)
        if inventory is None:
            paths = list(disk_paths) if disk_paths is not None else [DEFAULT_PREFIX]
            inventory = probe_live(host_paths=paths, gpu_required=any(m != "tiny" for m in models))
    return check_models(inventory, profiles if profiles is not None else load_profiles(), models, req, layout)


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
    requirements, model = requirements_from_manifest(bundle.manifest)
    if model is None:
        raise CheckFailed(f"the bundle's model {served_name(bundle.manifest)!r} is not one gptossctl can size",
                          code="install.unknown_model", hint="pack one of the known models (see hw check --help)")
    inventory = probe_capture(captures)
    if inventory is None:
        probe_at = layout.base if layout.base.exists() else layout.root
        inventory = probe_live(host_paths=[probe_at], gpu_required=model != "tiny")
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
