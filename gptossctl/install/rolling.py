"""Putting a release with several replicas in service, and taking one back out.

The serving set of a release is its units: one `gptoss@<instance>` for a release with one replica; for N,
`gptoss@<instance>-r<k>` (k < N) and the router `gptoss-router@<instance>` on the instance's port.

  bring_up        every replica restarted at once, each healthy and smoke-tested on its own port, then the
                  router restarted and proven (key enforced, a chat through it, nothing else exposed): a first
                  install, or a change of shape (replica count, ports, GPUs), where ports collide anyway
  roll            the same shape on a running instance, replica by replica: (1) drain it at the router (marked
                  down, graceful reload) and wait until it has nothing in flight, (2) its unit switched to the
                  new release, (3) restart, /health, smoke on its own port, (4) back in rotation; then the next.
                  The other replicas serve meanwhile, so clients see no failed request.
  roll_back       a replica that failed, and every one already switched, put back on the previous release,
                  each drained first and proven healthy before it returns to rotation
  restore_release the previous release's whole serving set back in service (after a failed bring_up, or a
                  failed first release: its units removed)
`current` moves only after all of it succeeded (lifecycle's switch step).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import CheckFailed, Finding, GptossctlError
from gptossctl.fsutil import atomic_write, read_nofollow
from gptossctl.install.activate import install_unit, run_install_smoke, start_and_prove, wait_healthy
from gptossctl.install.layout import Layout
from gptossctl.install.release import ReleaseRecord, ReplicaRecord, read_release, switch_current
from gptossctl.install.router import install_router, prove_router, reload_router, set_down, wait_drained
from gptossctl.install.steps import Steps


@dataclass(frozen=True)
class Activation:
    """What every step of putting a release in service needs."""

    layout: Layout
    systemd: Systemd
    steps: Steps
    api_key: str
    health_timeout: float = 1800.0
    smoke: bool = True
    drain_timeout: float = 600.0


def serving_units(layout: Layout, rec: ReleaseRecord | None) -> list[str]:
    """The units that serve a release (none for no release)."""
    if rec is None:
        return []
    if not rec.replicated:
        return [layout.unit_name]
    return [layout.replica_unit_name(r.index) for r in rec.replicas] + [layout.router_unit_name]


def installed_units(layout: Layout) -> list[str]:
    """The instance's units on disk, whichever release they came from."""
    names = [layout.unit_name] if layout.unit_path.exists() else []
    names += [layout.replica_unit_name(k) for k in layout.replica_units()]
    return names + ([layout.router_unit_name] if layout.router_unit_path.exists() else [])


def retire(layout: Layout, systemd: Systemd, keep: Collection[str]) -> list[str]:
    """Stop, disable and remove the instance's units that `keep` does not name (a release of another shape
    left them); the router's configuration goes with its unit. Returns what was removed."""
    gone = [name for name in installed_units(layout) if name not in keep]
    for name in gone:
        if systemd.live:
            systemd.stop(name)
        systemd.disable(name)
        (layout.unit_dir / name).unlink(missing_ok=True)
    if layout.router_unit_name not in keep:
        layout.router_config.unlink(missing_ok=True)
    if gone:
        systemd.daemon_reload()
    return gone


def install_replica_unit(layout: Layout, systemd: Systemd, release: Path, replica: ReplicaRecord) -> None:
    """Replica k's unit of this release becomes the installed one (an atomic replace), enabled."""
    atomic_write(layout.replica_unit_path(replica.index), read_nofollow(release / replica.files[2]).decode(), 0o644)
    systemd.daemon_reload()
    systemd.enable(layout.replica_unit_name(replica.index))


def install_serving_units(layout: Layout, systemd: Systemd, release: Path, api_key: str) -> list[str]:
    """Lay down (and enable) a release's units without starting them: staged trees and --no-start."""
    rec = _record(release)
    retire(layout, systemd, serving_units(layout, rec))
    if not rec.replicated:
        install_unit(layout, systemd, release)
        return [layout.unit_name]
    for r in rec.replicas:
        install_replica_unit(layout, systemd, release, r)
    install_router(layout, systemd, release, api_key, Path(rec.router))
    return serving_units(layout, rec)


def _record(release: Path) -> ReleaseRecord:
    rec = read_release(release)
    if rec is None:
        raise CheckFailed(f"{release} has no readable release record", code="install.no_release",
                          hint="install the bundle again")
    return rec


def _failing(exc: GptossctlError, unit: str) -> GptossctlError:
    exc.data.setdefault("unit", unit)  # whose journal explains it
    return exc


# ---------------------------------------------------------------- one replica


def prove_replica(act: Activation, rec: ReleaseRecord, r: ReplicaRecord, *, smoke: bool) -> dict[str, Any] | None:
    """/health on the replica's own port (failing fast when its unit exits), then the smoke test there."""
    name = act.layout.replica_unit_name(r.index)
    try:
        with act.steps(f"health r{r.index}", f"waiting for {r.endpoint}/health (up to {act.health_timeout:.0f}s)") as d:
            d.append(wait_healthy(act.systemd, name, r.endpoint, act.health_timeout))
        if not smoke:
            act.steps.skip(f"smoke r{r.index}", "--no-smoke, or restoring (health is the proof)")
            return None
        with act.steps(f"smoke r{r.index}", f"smoke test on {r.endpoint}") as d:
            out = run_install_smoke(r.endpoint, act.api_key, rec.served_name)
            d.append(f"{sum(c['status'] == 'pass' for c in out['checks'])} checks passed")
        return out
    except GptossctlError as exc:
        raise _failing(exc, name) from None


def restart_replica(act: Activation, rec: ReleaseRecord, r: ReplicaRecord) -> None:
    name = act.layout.replica_unit_name(r.index)
    with act.steps(f"start r{r.index}", f"restarting {name}") as d:
        try:
            act.systemd.restart(name)
        except GptossctlError as exc:
            raise _failing(exc, name) from None
        d.append(f"{name} restarted on release {rec.version}")


def drain(act: Activation, rec: ReleaseRecord, r: ReplicaRecord, down: Collection[int]) -> None:
    """(1) Out of rotation at the router (graceful reload), then wait until it has nothing in flight."""
    with act.steps(f"drain r{r.index}", f"taking replica {r.index} out of rotation and waiting for its requests") as d:
        set_down(act.layout, act.systemd, rec, down)
        d.append(wait_drained(r, act.drain_timeout))


def undrain(act: Activation, rec: ReleaseRecord, r: ReplicaRecord, down: Collection[int] = ()) -> None:
    """(4) Back in rotation."""
    with act.steps(f"undrain r{r.index}", f"replica {r.index} back in rotation") as d:
        set_down(act.layout, act.systemd, rec, down)
        d.append(f"router reloaded; replica {r.index} serves again")


def switch_replica(act: Activation, release: Path, rec: ReleaseRecord, r: ReplicaRecord, *,
                   smoke: bool) -> dict[str, Any] | None:
    """(2)-(3) One drained replica onto `release`: its unit, restarted, healthy, smoke-tested."""
    name = act.layout.replica_unit_name(r.index)
    with act.steps(f"unit r{r.index}", f"installing {name} for release {rec.version}") as d:
        install_replica_unit(act.layout, act.systemd, release, r)
        d.append(f"{act.layout.replica_unit_path(r.index)} -> release {rec.version}")
    restart_replica(act, rec, r)
    return prove_replica(act, rec, r, smoke=smoke)


# ---------------------------------------------------------------- the whole set


def bring_up(act: Activation, release: Path) -> dict[str, Any]:
    """Every replica of the release (restarted together, proven one by one), then the router."""
    rec = _record(release)
    layout, systemd = act.layout, act.systemd
    retire(layout, systemd, serving_units(layout, rec))
    with act.steps("units", f"installing {len(rec.replicas)} replica units and the router for release "
                            f"{rec.version}") as d:
        for r in rec.replicas:
            install_replica_unit(layout, systemd, release, r)
        install_router(layout, systemd, release, act.api_key, Path(rec.router))
        d.append(", ".join(serving_units(layout, rec)))
    for r in rec.replicas:
        restart_replica(act, rec, r)
    replicas = [prove_replica(act, rec, r, smoke=act.smoke) for r in rec.replicas]
    return {"replicas": replicas, "router": start_router(act, rec, restart=True)}


def start_router(act: Activation, rec: ReleaseRecord, *, restart: bool) -> dict[str, Any] | None:
    """The router (re)started or reloaded, healthy, and proven as clients see it."""
    name = act.layout.router_unit_name
    try:
        with act.steps("router", f"{'restarting' if restart else 'reloading'} {name}") as d:
            if restart:
                act.systemd.restart(name)
            else:
                reload_router(act.layout, act.systemd)
            d.append(wait_healthy(act.systemd, name, rec.endpoint, min(act.health_timeout, 120.0), poll=0.5))
        if not act.smoke:
            act.steps.skip("router smoke", "--no-smoke, or restoring (health is the proof)")
            return None
        with act.steps("router smoke", f"{rec.endpoint}: key enforced, a chat through it, nothing else exposed") as d:
            out = prove_router(rec.endpoint, act.api_key, rec.served_name)
            d.append(f"{len(out['checks'])} checks passed")
        return out
    except GptossctlError as exc:
        raise _failing(exc, name) from None


def can_roll(layout: Layout, systemd: Systemd, prev: ReleaseRecord | None, new: ReleaseRecord) -> bool:
    """Replica by replica only onto the same shape (ports, GPUs, endpoint) with the router running: anything
    else would put two replicas on one GPU or port."""
    if prev is None or not (prev.replicated and new.replicated and systemd.live):
        return False
    shape = [(r.index, r.port, r.gpus) for r in prev.replicas] == [(r.index, r.port, r.gpus) for r in new.replicas]
    return shape and (prev.host, prev.port) == (new.host, new.port) \
        and systemd.active_state(layout.router_unit_name) == "active"


def roll(act: Activation, release: Path, prev_release: Path) -> dict[str, Any]:
    """Replica by replica onto `release`; on a failure, that replica and those already switched go back."""
    new, prev = _record(release), _record(prev_release)
    switched: list[ReplicaRecord] = []
    smokes = []
    for r in new.replicas:
        try:
            drain(act, new, r, {r.index})
            smokes.append(switch_replica(act, release, new, r, smoke=act.smoke))
            undrain(act, new, r)
        except GptossctlError as exc:
            unit = str(exc.data.get("unit", act.layout.replica_unit_name(r.index)))
            journal = journal_findings(act.systemd, exc, unit)  # before the restore writes over it
            outcome = roll_back(act, prev_release, prev, [*switched, r])
            raise CheckFailed(f"replica {r.index} of release {new.version} did not come up: {exc.message}; "
                              f"{outcome}", code=exc.code if exc.code.startswith("install.") else "install.failed",
                              findings=[*exc.findings, *journal, Finding("install.rollback",
                                                                         act.layout.router_unit_name, outcome)],
                              hint=exc.hint, data={"unit": unit, "restored": True}) from None
        switched.append(r)
    changed = install_router(act.layout, act.systemd, release, act.api_key, Path(new.router))
    return {"replicas": smokes, "router": start_router(act, new, restart=changed)}


def roll_back(act: Activation, prev_release: Path, prev: ReleaseRecord, replicas: list[ReplicaRecord]) -> str:
    """Each of `replicas` drained, back on the previous release and healthy before it returns to rotation; one
    that does not come back stays out of rotation (the router never sends it a request)."""
    failed: list[str] = []
    out: set[int] = set()
    restore = replace(act, smoke=False)
    for r in replicas:
        for attempt in (1, 2):  # a second start: seen once, a vLLM CPU worker hung at start right after a failure
            try:
                with act.steps(f"rollback r{r.index}", f"restoring replica {r.index} to release {prev.version}"
                                                       + (" (second attempt)" if attempt == 2 else "")) as d:
                    drain(restore, prev, r, out | {r.index})
                    switch_replica(restore, prev_release, prev, r, smoke=False)
                    undrain(restore, prev, r, out)
                    d.append(f"replica {r.index} healthy on release {prev.version}, back in rotation")
                break
            except GptossctlError as exc:
                if attempt == 2:
                    out.add(r.index)
                    failed.append(f"replica {r.index}: {exc.message}")
    which = ", ".join(str(r.index) for r in replicas)
    if failed:
        return f"restoring replica(s) {which} to release {prev.version} failed for " + "; ".join(failed) + \
            " (kept out of rotation)"
    return f"replica(s) {which} restored to release {prev.version} and healthy; release {prev.version} serves"


def restore_release(act: Activation, previous: int | None) -> str:
    """Put the previous release's serving set back; say what happened."""
    layout, systemd = act.layout, act.systemd
    rec = read_release(layout.release(previous)) if previous is not None else None
    if rec is None:
        gone = retire(layout, systemd, ())
        return "no previous release: the unit was stopped and removed" if gone == [layout.unit_name] or not gone \
            else f"no previous release: {', '.join(gone)} stopped and removed"
    try:
        with act.steps("rollback", f"restoring release {previous}"):
            retire(layout, systemd, serving_units(layout, rec))
            if not rec.replicated:
                install_unit(layout, systemd, layout.release(rec.version))
        if rec.replicated:
            bring_up(replace(act, smoke=False), layout.release(rec.version))
        else:
            start_and_prove(layout, systemd, layout.release(rec.version), act.health_timeout, smoke=False,
                            steps=act.steps)
        switch_current(layout, rec.version)
        return f"release {previous} restored and healthy"
    except GptossctlError as exc:
        return f"restoring release {previous} failed too: {exc.message}"


def journal_findings(systemd: Systemd, exc: GptossctlError, fallback: str) -> list[Finding]:
    """The journal tail of the unit that failed (the error names it), as a finding."""
    unit = str(exc.data.get("unit", fallback))
    journal = systemd.journal_tail(unit, 30)
    return [Finding("install.journal", unit, journal[-3000:])] if journal else []
