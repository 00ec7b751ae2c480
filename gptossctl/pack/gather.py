"""Gather everything a recipe names into local files, ready to copy-and-hash into the bundle.

model (dir | HF cache | Hub) -> wheels for the target (pip, explicit platform) -> FlashInfer kernels
of exactly the version vLLM pins -> vocab and compile caches -> profiles and unit templates.
With `dry_run`, nothing is downloaded: the plan lists what would be fetched and its known size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.adapters import pip
from gptossctl.errors import CheckFailed, UsageError
from gptossctl.hardware.profiles import load_profile
from gptossctl.pack import sources, wheels
from gptossctl.pack.assets import compile_caches, fetch_vocab
from gptossctl.pack.sbom import license_summary
from gptossctl.pack.spec import BundleSpec
from gptossctl.resources import data_dir


@dataclass
class Gathered:
    items: list[tuple[Path | None, str, str, int | None]] = field(default_factory=list)  # src, dest, component, size
    wheels: list[tuple[wheels.Wheel, str]] = field(default_factory=list)  # (wheel, "wheels" | "kernels")
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    to_fetch: list[str] = field(default_factory=list)  # dry run: what a real pack would download
    model: sources.ModelSource | None = None


def _model_source(spec: BundleSpec, spec_dir: Path, model_dir: Path | None) -> sources.ModelSource:
    m = spec.model
    if model_dir is not None:
        return sources.from_directory(model_dir, m)
    if m.source.dir:
        return sources.from_directory(spec_dir / m.source.dir, m)
    if m.source.hf_cache:
        return sources.from_hf_cache(spec_dir / m.source.hf_cache, m)
    return sources.from_hub(m)


def _self_wheel(dest: Path) -> Path:
    """gptossctl's own wheel, so the air-gapped host installs the CLI from the bundle."""
    project = Path(__file__).resolve().parents[2]
    if not (project / "pyproject.toml").is_file():
        found = sorted(dest.glob("gptossctl-*.whl"))
        if found:
            return found[-1]
        raise UsageError("gptossctl is not running from a source checkout, so its wheel cannot be built",
                         code="pack.no_self_wheel", hint=f"put gptossctl-{__version__}-*.whl in {dest}, or set "
                         "wheels.include_gptossctl: false")
    pip.build_wheel(project, dest)
    built = sorted(dest.glob(f"gptossctl-{__version__}-*.whl"))
    if not built:
        raise CheckFailed("building gptossctl's own wheel made no wheel", code="pack.self_wheel_failed",
                          hint=f"build it by hand (pip wheel {project}) to see why")
    return built[-1]


def gather(spec: BundleSpec, spec_dir: Path, scratch: Path, *, model_dir: Path | None = None,
           wheelhouse: Path | None = None, dry_run: bool = False) -> Gathered:
    g = Gathered()
    source = _model_source(spec, spec_dir, model_dir)
    if source.kind == "hub":
        if dry_run:
            g.to_fetch += [f"{source.repo}@{source.commit}:{f.rel}" for f in source.files]
        else:
            _ensure_disk(scratch, source.known_bytes)
            source = sources.download(source, scratch / "hf-cache")
    g.model = source
    g.items += [(f.src, f"model/{f.rel}", "model", f.size) for f in source.files]
    g.components["model"] = {"name": spec.model.name, "repo": spec.model.repo,
                             "revision": source.commit or spec.model.revision,
                             "requested_revision": spec.model.revision, "source": source.kind,
                             "license": spec.model.license}

    house = wheelhouse or (spec_dir / spec.wheels.dir if spec.wheels.dir else None)
    if spec.vllm is None:
        if house is not None:  # no Python stack pinned: ship a given wheelhouse as it is
            for w in sorted(house.glob("*.whl")):
                g.wheels.append((wheels.read_wheel(w), "wheels"))
    else:
        _gather_wheels(spec, spec_dir, scratch, house, g, dry_run=dry_run)
    g.items += [(w.path, f"{comp}/{w.path.name}", comp, w.path.stat().st_size) for w, comp in g.wheels]

    if spec.assets is not None:
        if dry_run and not spec.assets.tiktoken_dir:
            g.to_fetch += [f"vocab {n}.tiktoken" for n in spec.assets.tiktoken]
        else:
            local = spec_dir / spec.assets.tiktoken_dir if spec.assets.tiktoken_dir else None
            for a in fetch_vocab(spec.assets.tiktoken, scratch, local_dir=local):
                g.items.append((a.src, a.dest, a.component, a.src.stat().st_size))
        files, labels = compile_caches(spec.assets, spec_dir)
        g.items += [(a.src, a.dest, a.component, a.src.stat().st_size) for a in files]
        g.components["assets"] = {"tiktoken": list(spec.assets.tiktoken), "compile_caches": labels,
                                  "TIKTOKEN_ENCODINGS_BASE": "assets/tiktoken"}

    names = []
    for name in spec.profiles:
        if name.endswith((".yaml", ".yml")):  # a site's own profile, next to the recipe
            src = spec_dir / name
            if not src.is_file():
                raise UsageError(f"profile file {src} does not exist", code="pack.unknown_profile",
                                 hint="site profiles are .yaml files next to the recipe, named relative to it")
            name = load_profile(src).name  # validated now, not on the air-gapped side
        else:
            src = data_dir("profiles") / f"{name}.yaml"
            if not src.is_file():
                raise UsageError(f"profile {name!r} is not shipped with gptossctl", code="pack.unknown_profile",
                                 hint="see 'gptossctl profiles list', or give a path to your own profile file")
        names.append(name)
        g.items.append((src, f"profiles/{name}.yaml", "profiles", src.stat().st_size))
    for name in spec.units:
        src = data_dir("systemd") / name
        if not src.is_file():
            raise UsageError(f"unit template {name!r} is not shipped with gptossctl", code="pack.unknown_unit",
                             hint="use gptoss@.service (see the systemd/ folder of gptossctl)")
        g.items.append((src, f"systemd/{name}", "units", src.stat().st_size))
    if spec.profiles:
        g.components.setdefault("profiles", {})["names"] = names
    if spec.units:
        g.components.setdefault("units", {})["names"] = list(spec.units)
    return g


def _gather_wheels(spec: BundleSpec, spec_dir: Path, scratch: Path, house: Path | None, g: Gathered, *,
                   dry_run: bool) -> None:
    assert spec.vllm is not None
    reqs = [f"vllm=={spec.vllm.version}", *spec.wheels.requirements]
    if spec.wheels.include_uv:
        reqs.append("uv")
    links = [house] if house else []
    if spec.wheels.include_gptossctl:
        if dry_run:
            g.to_fetch.append(f"gptossctl=={__version__} (built from this checkout)")
        else:
            links.append(_self_wheel(scratch / "self").parent)
        reqs.append(f"gptossctl=={__version__}")
    if dry_run:
        where = f"wheelhouse {house}" if house else "the package index"
        g.to_fetch.append(f"wheels from {where} for {spec.target.platform}, Python {spec.target.python}: "
                          + ", ".join(reqs) + " and their dependencies")
        return
    wdir = scratch / "wheels"
    wheels.download(reqs, spec.target, wdir, find_links=links, no_index=house is not None)
    got = [wheels.read_wheel(p) for p in sorted(wdir.glob("*.whl"))]
    g.wheels += [(w, "wheels") for w in got]
    cuda = wheels.cuda_runtime(got)
    if cuda and cuda.split(".")[0] != spec.target.cuda.split(".")[0]:
        raise CheckFailed(f"the resolved wheels need CUDA {cuda}, the recipe says {spec.target.cuda}",
                          code="pack.cuda_mismatch", hint="fix target.cuda in the recipe, or pin a matching torch")
    pin = wheels.flashinfer_pin(got)
    kernels: list[wheels.Wheel] = []
    if spec.kernels.flashinfer and pin:
        kdir = scratch / "kernels"
        if spec.kernels.dir:
            kernels = [wheels.read_wheel(p) for p in sorted((spec_dir / spec.kernels.dir).glob("*.whl"))]
        else:
            try:
                wheels.download([f"flashinfer-cubin=={pin}", f"flashinfer-jit-cache=={pin}"], spec.target, kdir,
                                find_links=links, no_index=house is not None)
            except CheckFailed as exc:
                raise CheckFailed(f"no FlashInfer kernel wheels {pin} for the target", code="pack.kernels_missing",
                                  findings=exc.findings, hint="fetch them with `vllm download-kernels` on the connected "
                                  "side and set kernels.dir in the recipe") from None
            kernels = [wheels.read_wheel(p) for p in sorted(kdir.glob("*.whl"))]
        findings = wheels.check_flashinfer(kernels, pin)
        if findings:
            raise CheckFailed(f"FlashInfer kernels do not match flashinfer-python=={pin} that vLLM pins",
                              code="pack.flashinfer_mismatch", findings=findings,
                              hint=f"use flashinfer-cubin and flashinfer-jit-cache {pin} (vllm download-kernels)")
        g.wheels += [(k, "kernels") for k in kernels]
    g.components["wheels"] = {"vllm": spec.vllm.version, "python": spec.target.python,
                              "platform": spec.target.platform, "arch": spec.target.arch,
                              "cuda": cuda or spec.target.cuda, "count": len(got),
                              "licenses": license_summary(got)}
    if pin:
        g.components["kernels"] = {"flashinfer": pin, "count": len(kernels)}


def _ensure_disk(where: Path, need: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if need + (64 << 20) > free:
        raise CheckFailed(f"not enough disk at {where} to download: {need / 2**30:.2f} GiB needed, "
                          f"{free / 2**30:.2f} GiB free", code="pack.insufficient_disk",
                          hint="free space or point --scratch at a larger disk")
