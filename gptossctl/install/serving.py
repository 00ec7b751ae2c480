"""The serving set of a release: the units that serve it, as one typed value every step loops over.

Every release installed by this gptossctl has the same shape: the router `gptoss-router@<instance>` (nginx
from the OS) on the instance's port, and behind it N >= 1 vLLM replicas `gptoss@<instance>-r<k>` on loopback
ports `--port`+1+k, each pinned to its GPUs with its own config, 0600 environment file and unit. A single
vLLM is a set of one replica. Activation, rolling upgrades, rollback, status, compliance and the support
bundle all loop over `members` (and the router).

A release recorded before the router was always in front (its record has no `replicas`: one vLLM unit
`gptoss@<instance>` on the port itself, files vllm.yaml, service.env, unit.service) reads as a legacy set:
one member and no router. It is still read, checked, and put back by a rollback; an install moves it behind
the router (lifecycle's shape step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.install.layout import Layout
from gptossctl.install.release import (
    CONFIG,
    ENV_FILE,
    LOOPBACK,
    ROUTER_CONFIG,
    ROUTER_UNIT_COPY,
    UNIT_COPY,
    ReleaseRecord,
    ReplicaRecord,
)
from gptossctl.install.render import render_release, unit_template
from gptossctl.install.router import render_router

if TYPE_CHECKING:
    from gptossctl.hardware.profiles import Profile


@dataclass(frozen=True)
class Member:
    """One vLLM unit of a serving set."""

    unit: str  # its unit name
    path: Path  # where its unit is installed
    port: int
    gpus: tuple[int, ...]
    files: tuple[str, str, str]  # (config, environment file, unit copy) in the release
    shape: Layout  # where its state and cache live (what its unit's %i names)
    replica: ReplicaRecord | None  # None: the one vLLM of a legacy release, on the instance's port

    @property
    def tag(self) -> str:
        """How steps and messages name it: r<k>, or "" for a legacy single."""
        return f"r{self.replica.index}" if self.replica is not None else ""

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@dataclass(frozen=True)
class Router:
    unit: str
    path: Path
    config: Path  # the configuration it runs (the release's router.conf, or with a replica drained)
    files: tuple[str, str] = (ROUTER_CONFIG, ROUTER_UNIT_COPY)


@dataclass(frozen=True)
class ServingSet:
    members: tuple[Member, ...]
    router: Router | None  # None only for a legacy release

    @property
    def units(self) -> list[str]:
        """Every unit that serves the release: the members, then the router."""
        return [m.unit for m in self.members] + ([self.router.unit] if self.router else [])

    @property
    def unit_paths(self) -> list[tuple[str, Path, str]]:
        """(unit name, installed path, the release's copy) of every unit, the router last."""
        out = [(m.unit, m.path, m.files[2]) for m in self.members]
        return out + ([(self.router.unit, self.router.path, self.router.files[1])] if self.router else [])

    @property
    def front(self) -> str:
        """The unit that answers at the instance's endpoint."""
        return self.router.unit if self.router else self.members[0].unit

    @property
    def legacy(self) -> bool:
        return self.router is None


def serving_set(layout: Layout, rec: ReleaseRecord) -> ServingSet:
    if rec.legacy_single:
        return ServingSet((Member(layout.unit_name, layout.unit_path, rec.port, rec.gpus, (CONFIG, ENV_FILE, UNIT_COPY),
                                  layout, None),), None)
    members = tuple(Member(layout.replica_unit_name(r.index), layout.replica_unit_path(r.index), r.port, r.gpus,
                           r.files, layout.replica(r.index), r) for r in rec.replicas)
    return ServingSet(members, Router(layout.router_unit_name, layout.router_unit_path, layout.router_config))


def render_set(profile: Profile, layout: Layout, release_live: Path, rec: ReleaseRecord, api_key: str, *,
               vocab: bool) -> dict[str, str]:
    """{file name in the release: text} for every member (config, environment, unit) and the router. Pure:
    compliance renders again from the release record and compares. The units come from gptossctl's own
    templates (install/units.py), never from the release's copy."""
    out: dict[str, str] = {}
    ss = serving_set(layout, rec)
    for m in ss.members:
        config, env, unit = m.files
        rendered = render_release(unit_template(), profile, m.shape, release_live, Path(rec.python), api_key,
                                  port=m.port, gpus=m.gpus, tensor_parallel=rec.tensor_parallel,
                                  served=rec.served_name, vocab=vocab, files=(config, env),
                                  replica=m.replica is not None)
        out |= {config: rendered["config"], env: rendered["env"], unit: rendered["unit"]}
    if ss.router is None:
        return out
    return out | render_router(layout, rec)
