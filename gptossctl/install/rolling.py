"""Putting a release's serving set in service, and taking one back out.

The serving set (install/serving.py) is the router `gptoss-router@<instance>` on the instance's port and the
replicas `gptoss@<instance>-r<k>` behind it, one or more; a legacy release (before the router was always in
front) is its one unit `gptoss@<instance>` on the port. Every function here loops over its members.

  bring_up        every member restarted at once, each healthy and smoke-tested on its own port, then the
                  router restarted and proven (key enforced, a chat through it, nothing else exposed): a first
                  install, or a change of shape (replica count, ports, GPUs, a legacy release moved behind the
                  router), where ports or GPUs collide anyway. What the new set does not name is stopped
                  first (retire): on a one-GPU host the old vLLM frees its memory before the new one starts.
  roll            the same shape on a running instance, replica by replica: (1) drain it at the router (marked
                  down, graceful reload) and wait until it has nothing in flight, (2) its unit switched to the
                  new release, (3) restart, /health, smoke on its own port, (4) back in rotation; then the next.
                  The other replicas serve meanwhile, so clients see no failed request.
  roll_back       a replica that failed, and every one already switched, put back on the previous release,
                  each drained first and proven healthy before it returns to rotation
  restore_release the previous release's whole serving set back in service (after a failed bring_up, or a
                  failed first release: its units removed); a legacy release comes back as it was
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
from gptossctl.install.activate import run_install_smoke, wait_healthy
from gptossctl.install.layout import Layout
from gptossctl.install.release import ReleaseRecord, read_release, switch_current
from gptossctl.install.router import install_router, prove_router, reload_router, set_down, wait_drained
from gptossctl.install.serving import Member, serving_set
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
    return serving_set(layout, rec).units if rec is not None else []


def installed_units(layout: Layout) -> list[str]:
    """The instance's units on disk, whichever release (or shape) they came from."""
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


def install_member_unit(layout: Layout, systemd: Systemd, release: Path, m: Member) -> None:
    """A member's unit of this release becomes the installed one (an atomic replace), enabled."""
    atomic_write(m.path, read_nofollow(release / m.files[2]).decode(), 0o644)
    systemd.daemon_reload()
    systemd.enable(m.unit)


def install_serving_units(layout: Layout, systemd: Systemd, release: Path, api_key: str) -> list[str]:
    """Lay down (and enable) a release's units without starting them: staged trees and --no-start."""
    rec = _record(release)
    ss = serving_set(layout, rec)
    retire(layout, systemd, ss.units)
    for m in ss.members:
        install_member_unit(layout, systemd, release, m)
    if ss.router is not None:
        install_router(layout, systemd, release, api_key, Path(rec.router))
    return ss.units


def _record(release: Path) -> ReleaseRecord:
    rec = read_release(release)
    if rec is None:
        raise CheckFailed(f"{release} has no readable release record", code="install.no_release",
                          hint="install the bundle again")
    return rec


def _failing(exc: GptossctlError, unit: str) -> GptossctlError:
    exc.data.setdefault("unit", unit)  # whose journal explains it
    return exc


# ---------------------------------------------------------------- one member


def _step(name: str, m: Member) -> str:
    return f"{name} {m.tag}".strip()


def prove_member(act: Activation, rec: ReleaseRecord, m: Member, *, smoke: bool) -> dict[str, Any] | None:
    """/health on the member's own port (failing fast when its unit exits), then the smoke test there."""
    try:
        with act.steps(_step("health", m), f"waiting for {m.endpoint}/health (up to {act.health_timeout:.0f}s)") as d:
            d.append(wait_healthy(act.systemd, m.unit, m.endpoint, act.health_timeout))
        if not smoke:
            act.steps.skip(_step("smoke", m), "--no-smoke, or restoring (health is the proof)")
            return None
        with act.steps(_step("smoke", m), f"smoke test on {m.endpoint}") as d:
            out = run_install_smoke(m.endpoint, act.api_key, rec.served_name)
            d.append(f"{sum(c['status'] == 'pass' for c in out['checks'])} checks passed")
        return out
    except GptossctlError as exc:
        raise _failing(exc, m.unit) from None


def restart_member(act: Activation, rec: ReleaseRecord, m: Member) -> None:
    with act.steps(_step("start", m), f"restarting {m.unit}") as d:
        try:
            act.systemd.restart(m.unit)
        except GptossctlError as exc:
            raise _failing(exc, m.unit) from None
        d.append(f"{m.unit} restarted on release {rec.version}")


def _replica(m: Member) -> int:
    assert m.replica is not None, "only a replica behind the router is drained"
    return m.replica.index


def drain(act: Activation, rec: ReleaseRecord, m: Member, down: Collection[int]) -> None:
    """(1) Out of rotation at the router (graceful reload), then wait until it has nothing in flight."""
    k = _replica(m)
    with act.steps(f"drain r{k}", f"taking replica {k} out of rotation and waiting for its requests") as d:
        set_down(act.layout, act.systemd, rec, down)
        assert m.replica is not None
        d.append(wait_drained(m.replica, act.drain_timeout))


def undrain(act: Activation, rec: ReleaseRecord, m: Member, down: Collection[int] = ()) -> None:
    """(4) Back in rotation."""
    k = _replica(m)
    with act.steps(f"undrain r{k}", f"replica {k} back in rotation") as d:
        set_down(act.layout, act.systemd, rec, down)
        d.append(f"router reloaded; replica {k} serves again")


def switch_member(act: Activation, release: Path, rec: ReleaseRecord, m: Member, *,
                  smoke: bool) -> dict[str, Any] | None:
    """(2)-(3) One drained replica onto `release`: its unit, restarted, healthy, smoke-tested."""
    with act.steps(_step("unit", m), f"installing {m.unit} for release {rec.version}") as d:
        install_member_unit(act.layout, act.systemd, release, m)
        d.append(f"{m.path} -> release {rec.version}")
    restart_member(act, rec, m)
    return prove_member(act, rec, m, smoke=smoke)


# ---------------------------------------------------------------- the whole set


def bring_up(act: Activation, release: Path) -> dict[str, Any]:
    """Every member of the release's set (restarted together, proven one by one), then the router. Units of
    another shape are stopped first: their ports and GPUs are free before the new members start."""
    rec = _record(release)
    layout, systemd = act.layout, act.systemd
    ss = serving_set(layout, rec)
    gone = retire(layout, systemd, ss.units)
    with act.steps("units", f"installing {', '.join(ss.units)} for release {rec.version}") as d:
        for m in ss.members:
            install_member_unit(layout, systemd, release, m)
        if ss.router is not None:
            install_router(layout, systemd, release, act.api_key, Path(rec.router))
        d.append(", ".join(ss.units) + (f" (stopped and removed first: {', '.join(gone)})" if gone else ""))
    for m in ss.members:
        restart_member(act, rec, m)
    replicas = [prove_member(act, rec, m, smoke=act.smoke) for m in ss.members]
    return proof(replicas, start_router(act, rec, restart=True) if ss.router is not None else None)


def proof(replicas: list[dict[str, Any] | None], router: dict[str, Any] | None) -> dict[str, Any]:
    """What an activation proved: each replica's smoke test and the router's, and `ok` over those that ran
    (None when none ran: --no-smoke, health alone)."""
    ran = [x for x in (*replicas, router) if x is not None]
    return {"ok": all(bool(x.get("ok")) for x in ran) if ran else None, "replicas": replicas, "router": router}


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


def _listener_shape(rec: ReleaseRecord) -> tuple[str, int, tuple[str, ...]] | None:
    """What of the TLS listener the router's unit is rendered from (its user, capabilities, peers)."""
    return None if rec.edge is None else (rec.edge.host, rec.edge.port, rec.edge.allow)


def can_roll(layout: Layout, systemd: Systemd, prev: ReleaseRecord | None, new: ReleaseRecord) -> bool:
    """Replica by replica only onto the same shape (ports, GPUs, endpoint, the router's listener) with the router
    running: anything else would put two replicas on one GPU or port, or hand a drain's configuration (which
    reads the listener's root-only files) to a router unit of the other shape, whose reload then fails and the
    replica is never drained."""
    if prev is None or prev.legacy_single or new.legacy_single or not systemd.live:
        return False
    shape = [(r.index, r.port, r.gpus) for r in prev.replicas] == [(r.index, r.port, r.gpus) for r in new.replicas]
    return shape and (prev.host, prev.port) == (new.host, new.port) \
        and _listener_shape(prev) == _listener_shape(new) \
        and systemd.active_state(layout.router_unit_name) == "active"


def roll(act: Activation, release: Path, prev_release: Path) -> dict[str, Any]:
    """Replica by replica onto `release`; on a failure, that replica and those already switched go back."""
    new, prev = _record(release), _record(prev_release)
    switched: list[Member] = []
    smokes = []
    for m in serving_set(act.layout, new).members:
        k = _replica(m)
        try:
            drain(act, new, m, {k})
            smokes.append(switch_member(act, release, new, m, smoke=act.smoke))
            undrain(act, new, m)
        except GptossctlError as exc:
            unit = str(exc.data.get("unit", m.unit))
            journal = journal_findings(act.systemd, exc, unit)  # before the restore writes over it
            outcome = roll_back(act, prev_release, prev, [*switched, m])
            raise CheckFailed(f"replica {k} of release {new.version} did not come up: {exc.message}; "
                              f"{outcome}", code=exc.code if exc.code.startswith("install.") else "install.failed",
                              findings=[*exc.findings, *journal, Finding("install.rollback",
                                                                         act.layout.router_unit_name, outcome)],
                              hint=exc.hint, data={"unit": unit, "restored": True}) from None
        switched.append(m)
    changed = install_router(act.layout, act.systemd, release, act.api_key, Path(new.router))
    return proof(smokes, start_router(act, new, restart=changed))


def roll_back(act: Activation, prev_release: Path, prev: ReleaseRecord, members: list[Member]) -> str:
    """Each of `members` drained, back on the previous release and healthy before it returns to rotation; one
    that does not come back stays out of rotation (the router never sends it a request). Same shape: the
    previous release's member k is the same unit, port and GPUs."""
    failed: list[str] = []
    out: set[int] = set()
    restore = replace(act, smoke=False)
    for m in members:
        k = _replica(m)
        for attempt in (1, 2):  # a second start: seen once, a vLLM CPU worker hung at start right after a failure
            try:
                with act.steps(f"rollback r{k}", f"restoring replica {k} to release {prev.version}"
                                                 + (" (second attempt)" if attempt == 2 else "")) as d:
                    drain(restore, prev, m, out | {k})
                    switch_member(restore, prev_release, prev, m, smoke=False)
                    undrain(restore, prev, m, out)
                    d.append(f"replica {k} healthy on release {prev.version}, back in rotation")
                break
            except GptossctlError as exc:
                if attempt == 2:
                    out.add(k)
                    failed.append(f"replica {k}: {exc.message}")
    which = ", ".join(m.tag[1:] for m in members)
    if failed:
        return f"restoring replica(s) {which} to release {prev.version} failed for " + "; ".join(failed) + \
            " (kept out of rotation)"
    return f"replica(s) {which} restored and healthy on release {prev.version}; release {prev.version} serves"


def restore_release(act: Activation, previous: int | None) -> str:
    """Put the previous release's serving set back, whatever its shape (a legacy release: its one unit on the
    port, the router and replicas removed); say what happened."""
    layout, systemd = act.layout, act.systemd
    rec = read_release(layout.release(previous)) if previous is not None else None
    if rec is None:
        gone = retire(layout, systemd, ())
        return f"no previous release: {', '.join(gone) or 'no unit'} stopped and removed"
    try:
        with act.steps("rollback", f"restoring release {previous}") as d:
            d.append(f"putting back {', '.join(serving_units(layout, rec))}")
        bring_up(replace(act, smoke=False), layout.release(rec.version))
        switch_current(layout, rec.version)
        return f"release {previous} restored and healthy" + (" (its one vLLM on the port, without the router)"
                                                              if rec.legacy_single else "")
    except GptossctlError as exc:
        return f"restoring release {previous} failed too: {exc.message}"


def journal_findings(systemd: Systemd, exc: GptossctlError, fallback: str) -> list[Finding]:
    """The journal tail of the unit that failed (the error names it), as a finding."""
    unit = str(exc.data.get("unit", fallback))
    journal = systemd.journal_tail(unit, 30)
    return [Finding("install.journal", unit, journal[-3000:])] if journal else []
