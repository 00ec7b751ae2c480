"""Is it configured as approved? The unit and release files against a fresh rendering of the signed
template and profile, drop-ins, systemd-analyze exposure, offline and telemetry settings, the bind address."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from gptossctl.adapters.proc_net import listeners
from gptossctl.adapters.systemd import manager_environment
from gptossctl.compliance.evidence import LOOPBACKS, Evidence, cap, parse_env, read_text, shown
from gptossctl.compliance.invariants import env_allowlist_problems, unit_directive_problems
from gptossctl.compliance.result import CheckResult
from gptossctl.compliance.units import SEARCH_PATH, UnitView, manager_environment_problems
from gptossctl.install.release import ROUTER_CONFIG
from gptossctl.install.router import router_config

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
NO_TELEMETRY = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def _diff(expected: str, actual: str, name: str) -> list[str]:
    return [ln.rstrip("\n") for ln in difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                                           f"approved {name}", f"installed {name}", n=0, lineterm="")
            if not ln.startswith(("---", "+++", "@@"))]


def _unit_problems(ev: Evidence, v: UnitView) -> list[str]:
    """One unit as systemd applies it: the file we wrote is the approved rendering (and the release's copy),
    systemd loads that file, merges no drop-in but the ones gptossctl wrote (as rendered), and has no reload
    pending."""
    u, bad = v.unit, []
    installed = read_text(u.path)
    if installed is None:
        bad.append(f"{ev.live(u.path)} is missing")
    elif u.expected is None:
        bad.append(f"{ev.live(u.path)}: {u.why}")
    elif installed != u.expected:
        bad += [f"{ev.live(u.path)} differs from the unit rendered from the signed template:" if u.copy else
                f"{ev.live(u.path)} differs from what gptossctl renders {u.why}:", *_diff(u.expected, installed, u.name)]
    if u.copy is not None and u.expected is not None and read_text(u.copy) != u.expected:
        bad.append(f"{ev.live(u.copy)} differs from the approved rendering")
    for p in v.dropins:
        if is_vendor_default(ev, p):
            continue  # a distribution's own type-wide default: a warning of check_unit, not a failure
        if p not in u.own_dropins:
            bad.append(f"drop-in {ev.live(p)} changes {u.name}")
        elif read_text(p) != u.own_dropins[p]:
            bad.append(f"drop-in {ev.live(p)} of {u.name} differs from what its schedule renders")
    bad += [f"drop-in {ev.live(p)} of {u.name} (written by gptossctl) is missing" for p in u.own_dropins
            if p not in v.dropins]
    if v.fragment is None:
        bad.append(f"systemd finds no unit file for {u.name}")
    elif ev.live(v.fragment) != ev.live(u.path):
        bad.append(f"systemd loads {u.name} from {ev.live(v.fragment)}, not {ev.live(u.path)}")
    if v.need_reload:
        bad.append(f"systemd runs a different {u.name} than the files on disk (daemon-reload pending)")
    return bad


# Type-wide drop-ins that distributions ship in their own unit directory and apply to every service (Ubuntu
# 24.04 and Fedora: /usr/lib/systemd/system/service.d/10-timeout-abort.conf). Shown and a warning: a site
# reviews them once; anything under /etc, /run, /usr/local or a unit's own drop-in directories still fails.
_VENDOR_DIRS = ("usr/lib/systemd/system", "lib/systemd/system")


def is_vendor_default(ev: Evidence, p: Path) -> bool:
    live = ev.live(p).lstrip("/")
    return p.parent.name in ("service.d", "timer.d") and any(live.startswith(d + "/") for d in _VENDOR_DIRS)


def check_unit(ev: Evidence) -> CheckResult:
    """Every unit gptossctl installed (the vLLM unit or each replica's and the router's, the compliance service
    and timer, scheduled canaries), each as systemd applies it (compliance.units)."""
    bad = unit_directive_problems(ev) + [b for v in ev.units for b in _unit_problems(ev, v)]
    bad += manager_environment_problems(ev.layout, manager_environment(ev.systemd))
    locs = [ev.live(v.unit.path) for v in ev.units] + [ev.live(p) for v in ev.units for p in v.dropins]
    if bad:
        return CheckResult("config.unit", "fail", cap(bad), tuple(dict.fromkeys(locs)))
    vendor = sorted({ev.live(p) for v in ev.units for p in v.dropins if is_vendor_default(ev, p)})
    if vendor:
        return CheckResult("config.unit", "warn", cap([
            f"the distribution's type-wide drop-in {p} applies to every unit of its type: review it once (systemctl "
            "cat UNIT shows what it sets); nothing else changes the units" for p in vendor]), tuple(dict.fromkeys(locs)))
    how = "as systemd reports them (systemctl show)" if any(v.asked for v in ev.units) else \
        f"walking systemd's unit search path ({len(SEARCH_PATH)} directories)"
    n = len(ev.serving.members)
    serving = f"{n} replica unit{'s' if n > 1 else ''} and the router unit are" if ev.serving.router else \
        f"{ev.live(ev.serving.members[0].path)} is"
    return CheckResult("config.unit", "pass", (
        f"{serving} exactly the approved rendering of release {ev.rec.version}; no drop-ins",
        f"{len(ev.units)} units checked ({', '.join(v.unit.name for v in ev.units)}), {how}: each loaded from the "
        "file gptossctl wrote, no drop-in but a canary schedule's own",
        "the service manager's DefaultEnvironment=/ManagerEnvironment= (system.conf and system.conf.d in /etc, "
        "/run, /usr/local/lib, /usr/lib)" + (" and its live environment" if ev.systemd.live else "")
        + ": nothing but locale, time zone and the system PATH"), tuple(dict.fromkeys(locs)))


def _result(rule: str, bad: list[str], good: list[str], locs: list[str]) -> CheckResult:
    return CheckResult(rule, "fail" if bad else "pass", cap(bad or good), tuple(dict.fromkeys(locs)))


def _env_problems(ev: Evidence, name: str) -> list[str]:
    assert ev.rendered is not None
    text = ev.member_envs.get(name)
    if text is None:
        return [f"{name} is missing or unreadable"]
    if text == ev.rendered[name]:
        return []
    want, got = parse_env(ev.rendered[name]), parse_env(text)
    return [f"{name}: {k}: approved {shown(k, want.get(k))}, found {shown(k, got.get(k))}"
            for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)] \
        or [f"{name}: comments or layout differ from the approved rendering"]


def _router_config_problems(ev: Evidence) -> list[str]:
    """The release's router.conf and the one the router runs are the approved rendering (or the latter the
    same with one replica out of rotation: an interrupted rolling upgrade, named as such)."""
    assert ev.rendered is not None
    if ev.serving.router is None:
        return []
    expected, bad = ev.rendered[ROUTER_CONFIG], []
    if read_text(ev.release / ROUTER_CONFIG) != expected:
        bad.append(f"{ev.live(ev.release / ROUTER_CONFIG)} differs from the approved rendering")
    running = read_text(ev.layout.router_config)
    if running is None:
        return [*bad, f"{ev.live(ev.layout.router_config)} (the router's configuration) is missing"]
    if running != expected:
        drained = [r.index for r in ev.rec.replicas if running == _with_down(ev, {r.index})]
        bad += [f"replica {drained[0]} is out of rotation at the router: a rolling upgrade was interrupted"] if drained \
            else [f"{ev.live(ev.layout.router_config)} differs from the approved rendering:",
                  *_diff(expected, running, ROUTER_CONFIG)]
    return bad


def _with_down(ev: Evidence, down: set[int]) -> str:
    return router_config(ev.layout, ev.rec, down=down)


def _router_files(ev: Evidence) -> list[str]:
    return [ev.live(ev.release / ROUTER_CONFIG), ev.live(ev.layout.router_config)] if ev.serving.router else []


def check_release_files(ev: Evidence) -> CheckResult:
    """Every member's config and environment file, and the router's configuration (the release's and the one it
    runs), against a fresh rendering of the signed profile."""
    locs = [ev.live(ev.release / n) for m in ev.serving.members for n in m.files[:2]] + _router_files(ev)
    if ev.rendered is None:
        return CheckResult("config.release_files", "fail", (ev.render_error or "no approved rendering",
                                                            *env_allowlist_problems(ev)), tuple(locs))
    bad: list[str] = env_allowlist_problems(ev)
    for m in ev.serving.members:
        name = m.files[0]
        config = read_text(ev.release / name)
        if config != ev.rendered[name]:
            bad += [f"{name} is missing"] if config is None else \
                [f"{name} differs from the signed profile's rendering:", *_diff(ev.rendered[name], config, name)]
        bad += _env_problems(ev, m.files[1])
    bad += _router_config_problems(ev)
    return _result("config.release_files", bad, [
        f"the configs and environment files of {len(ev.serving.members)} replica(s)"
        + (" and the router's configuration" if ev.serving.router else "")
        + f" are the approved rendering of profile {ev.rec.profile}"], locs)


def check_exposure(ev: Evidence) -> CheckResult:
    bad: list[str] = []
    good: list[str] = []
    locs: list[str] = []
    for name, path, _copy in ev.serving.unit_paths:
        locs.append(ev.live(path))
        graded = ev.systemd.security(name)
        if graded is None:
            return CheckResult("config.exposure", "warn", ("systemd-analyze is not installed: the units were not "
                                                           "graded",), tuple(locs))
        if graded.score is None:
            bad.append(f"{name}: systemd-analyze gave no score: {graded.output.strip()[:200]}")
        else:
            (good if graded.score <= ev.opts.max_exposure else bad).append(
                f"{name}: exposure {graded.score} {graded.label} (threshold {ev.opts.max_exposure})")
    return _result("config.exposure", bad, good, locs)


def _fenced(ev: Evidence) -> list[str]:
    """Every unit denies all addresses but loopback; the router also the peers install approved for its listener
    on the site's network (the release record's edge), and no others."""
    bad = []
    router = ev.serving.router.unit if ev.serving.router else None
    for name, path, _copy in ev.serving.unit_paths:
        lines = [ln.strip() for ln in (read_text(path) or "").splitlines()]
        if "IPAddressDeny=any" not in lines:
            bad.append(f"{name} lacks IPAddressDeny=any")
        allowed = [a for ln in lines if ln.startswith("IPAddressAllow=") for a in ln.split("=", 1)[1].split()]
        approved = {"localhost", "127.0.0.1", "::1", "127.0.0.0/8"}
        if name == router and ev.rec.edge is not None:
            approved |= set(ev.rec.edge.allow)
        if any(a not in approved for a in allowed):
            bad.append(f"{name} allows traffic beyond what install approved: IPAddressAllow={' '.join(allowed)}")
    return bad


def _env_rule(ev: Evidence, rule: str, want: dict[str, str], forbidden: str, extra: list[str]) -> CheckResult:
    bad = list(extra)
    for name, text in ev.member_envs.items():
        env = parse_env(text) if text is not None else None
        if env is None:
            bad.append(f"{name} is missing or unreadable")
            continue
        bad += [f"{name}: {k}={shown(k, env.get(k))}, required {v}" for k, v in want.items() if env.get(k) != v]
        bad += [f"{name}: {forbidden} is set ({shown(forbidden, env[forbidden])}): it sends data off the host"] \
            if forbidden in env else []
    locs = [ev.live(ev.release / n) for n in ev.member_envs]
    return _result(rule, bad, [", ".join(f"{k}={v}" for k, v in want.items()) + f" in all {len(ev.member_envs)} "
                               "replica(s)"], locs)


def check_offline(ev: Evidence) -> CheckResult:
    res = _env_rule(ev, "config.offline", OFFLINE, "HF_ENDPOINT", _fenced(ev))
    if res.status == "pass":
        edge = f" (the router also {', '.join(ev.rec.edge.allow)}: its listener on the site's network)" \
            if ev.rec.edge and ev.serving.router else ""
        return CheckResult(res.id, "pass", (*res.evidence, "every unit: IPAddressDeny=any, IPAddressAllow=localhost"
                                            + edge), res.locations)
    return res


def check_usage_stats(ev: Evidence) -> CheckResult:
    return _env_rule(ev, "config.usage_stats", NO_TELEMETRY, "VLLM_USAGE_STATS_SERVER", [])


def _configured_hosts(ev: Evidence) -> list[str]:
    """Each member's config binds loopback (a legacy one: the host install approved); the router listens where
    install approved, and nowhere else."""
    bad = []
    for m in ev.serving.members:
        try:
            host = (yaml.safe_load(read_text(ev.release / m.files[0]) or "") or {}).get("host")
        except yaml.YAMLError:
            host = None
        if host not in LOOPBACKS:
            bad.append(f"{m.files[0]} binds {host!r}, not a loopback address")
        elif ev.serving.router is None and host != ev.rec.host:
            bad.append(f"{m.files[0]} binds {host}, install approved {ev.rec.host}")
    if ev.serving.router is None:
        return bad
    approved = [f"{'127.0.0.1' if ev.rec.host == 'localhost' else ev.rec.host}:{ev.rec.port}"]
    if ev.rec.edge is not None:  # the TLS listener on the site's network, as the record has it
        approved.append(f"{ev.rec.edge.address} ssl")
    got = [" ".join(m) for m in re.findall(r"^\s*listen\s+(\S+?)(?:\s+(ssl))?;", read_text(ev.layout.router_config)
                                             or "", re.M)]
    if [g.strip().replace("[", "").replace("]", "") for g in got] != \
            [a.replace("[", "").replace("]", "") for a in approved]:
        bad.append(f"the router listens on {', '.join(got) or 'nothing'}, install approved {', '.join(approved)}")
    return bad


def check_bind(ev: Evidence) -> CheckResult:
    bad = _configured_hosts(ev)
    ports = list(dict.fromkeys([ev.rec.port, *(m.port for m in ev.serving.members)]))
    good = [f"{'the router' if ev.serving.router else ev.serving.front} listens on {ev.rec.host}:{ev.rec.port}"
            + (f"; replicas on 127.0.0.1:{ports[1]}-{ports[-1]}" if len(ports) > 1 else "")
            + (f"; TLS on the site's network at {ev.rec.edge.address}, as install approved"
               if ev.rec.edge and ev.serving.router else "")]
    if ev.systemd.live:
        for port in ports:
            outside = [a for a in listeners(port) if not (a.startswith("127.") or a == "::1")]
            bad += [f"port {port} is listening on {', '.join(outside)}"] if outside else []
        good.append(f"listening on loopback only on ports {', '.join(map(str, ports))} (/proc/net/tcp)")
    locs = _router_files(ev)[1:] + [ev.live(ev.release / m.files[0]) for m in ev.serving.members]
    return _result("config.bind", bad, good, locs)
