"""Is it configured as approved? The unit and release files against a fresh rendering of the signed
template and profile, drop-ins, systemd-analyze exposure, offline and telemetry settings, the bind address."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from gptossctl.adapters.proc_net import listeners
from gptossctl.adapters.systemd import manager_environment
from gptossctl.compliance import replicas
from gptossctl.compliance.evidence import LOOPBACKS, Evidence, cap, parse_env, read_text, shown
from gptossctl.compliance.invariants import env_allowlist_problems, unit_directive_problems
from gptossctl.compliance.result import CheckResult
from gptossctl.compliance.units import SEARCH_PATH, UnitView, manager_environment_problems
from gptossctl.install.release import CONFIG, ENV_FILE


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
    serving = (f"{len(ev.rec.replicas)} replica units and the router unit are" if ev.rec.replicated else
               f"{ev.live(ev.layout.unit_path)} is")
    return CheckResult("config.unit", "pass", (
        f"{serving} exactly the approved rendering of release {ev.rec.version}; no drop-ins",
        f"{len(ev.units)} units checked ({', '.join(v.unit.name for v in ev.units)}), {how}: each loaded from the "
        "file gptossctl wrote, no drop-in but a canary schedule's own",
        "the service manager's DefaultEnvironment=/ManagerEnvironment= (system.conf and system.conf.d in /etc, "
        "/run, /usr/local/lib, /usr/lib)" + (" and its live environment" if ev.systemd.live else "")
        + ": nothing but locale, time zone and the system PATH"), tuple(dict.fromkeys(locs)))


def check_release_files(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_release_files(ev)
    locs = (ev.live(ev.release / CONFIG), ev.live(ev.release / ENV_FILE))
    if ev.rendered is None:
        return CheckResult("config.release_files", "fail", (ev.render_error or "no approved rendering",
                                                            *env_allowlist_problems(ev)), locs)
    bad = env_allowlist_problems(ev)
    config = read_text(ev.release / CONFIG)
    if config is None:
        bad.append(f"{CONFIG} is missing")
    elif config != ev.rendered["config"]:
        bad += [f"{CONFIG} differs from the signed profile's rendering:", *_diff(ev.rendered["config"], config,
                                                                                 CONFIG)]
    if ev.env_text is None:
        bad.append(f"{ENV_FILE} is missing or unreadable")
    elif ev.env_text != ev.rendered["env"]:
        want, got = parse_env(ev.rendered["env"]), ev.env or {}
        changed = [f"{ENV_FILE}: {k}: approved {shown(k, want.get(k))}, found {shown(k, got.get(k))}"
                   for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
        bad += changed or [f"{ENV_FILE}: comments or layout differ from the approved rendering"]
    if bad:
        return CheckResult("config.release_files", "fail", cap(bad), locs)
    return CheckResult("config.release_files", "pass", (f"{CONFIG} and {ENV_FILE} are the approved rendering "
                                                        f"of profile {ev.rec.profile}",), locs)


def check_exposure(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_exposure(ev)
    locs = (ev.live(ev.layout.unit_path),)
    graded = ev.systemd.security(ev.layout.unit_name)
    if graded is None:
        return CheckResult("config.exposure", "warn", ("systemd-analyze is not installed: the unit was not graded",),
                           locs)
    if graded.score is None:
        return CheckResult("config.exposure", "fail", (f"systemd-analyze gave no score: {graded.output.strip()[:300]}",),
                           locs)
    status = "pass" if graded.score <= ev.opts.max_exposure else "fail"
    return CheckResult("config.exposure", status, (f"exposure {graded.score} {graded.label} (threshold "
                                                   f"{ev.opts.max_exposure})",), locs)


def _unit_lines(ev: Evidence) -> list[str]:
    text = read_text(ev.layout.unit_path) or ""
    return [ln.strip() for ln in text.splitlines()]


def _expect_env(ev: Evidence, rule: str, want: dict[str, str], extra: list[str], forbidden: tuple[str, ...] = ()) -> CheckResult:
    env = ev.env
    locs = (ev.live(ev.release / ENV_FILE),)
    if env is None:
        return CheckResult(rule, "fail", (f"{ENV_FILE} is missing or unreadable",), locs)
    bad = [f"{k}={shown(k, env.get(k))}, required {v}" for k, v in want.items() if env.get(k) != v]
    bad += [f"{k} is set ({shown(k, env[k])}): it sends data off the host" for k in forbidden if k in env]
    bad += extra
    if bad:
        return CheckResult(rule, "fail", cap(bad), locs + (ev.live(ev.layout.unit_path),))
    return CheckResult(rule, "pass", (", ".join(f"{k}={v}" for k, v in want.items()),), locs)


def check_offline(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_offline(ev)
    lines = _unit_lines(ev)
    extra = []
    if "IPAddressDeny=any" not in lines:
        extra.append("the unit lacks IPAddressDeny=any")
    allowed = [ln.split("=", 1)[1] for ln in lines if ln.startswith("IPAddressAllow=")]
    if any(a.strip() not in ("localhost", "127.0.0.1", "::1", "127.0.0.0/8") for a in allowed):
        extra.append(f"the unit allows traffic beyond loopback: IPAddressAllow={' '.join(allowed)}")
    res = _expect_env(ev, "config.offline", {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                               "HF_HUB_DISABLE_TELEMETRY": "1"}, extra, ("HF_ENDPOINT",))
    if res.status == "pass":
        return CheckResult(res.id, "pass", (*res.evidence, "unit: IPAddressDeny=any, IPAddressAllow=localhost"),
                           res.locations)
    return res


def check_usage_stats(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_usage_stats(ev)
    return _expect_env(ev, "config.usage_stats", {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}, [],
                       ("VLLM_USAGE_STATS_SERVER",))


def check_bind(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_bind(ev)
    locs = (ev.live(ev.release / CONFIG),)
    try:
        host = (yaml.safe_load(read_text(ev.release / CONFIG) or "") or {}).get("host")
    except yaml.YAMLError:
        host = None
    approved = ev.rec.host
    bad = []
    if host not in LOOPBACKS:
        bad.append(f"vllm.yaml binds {host!r}, not a loopback address")
    elif host != approved:
        bad.append(f"vllm.yaml binds {host}, install approved {approved}")
    evidence = [f"vllm.yaml binds {host}:{ev.rec.port}"]
    if ev.systemd.live and ev.active:
        listening = listeners(ev.rec.port)
        outside = [a for a in listening if not (a.startswith("127.") or a == "::1")]
        if outside:
            bad.append(f"port {ev.rec.port} is listening on {', '.join(outside)}")
        evidence.append(f"listening on {', '.join(listening) or 'nothing'} (/proc/net/tcp)")
    if bad:
        return CheckResult("config.bind", "fail", cap(bad), locs)
    return CheckResult("config.bind", "pass", tuple(evidence), locs)
