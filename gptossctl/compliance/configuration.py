"""Is it configured as approved? The unit and release files against a fresh rendering of the signed
template and profile, drop-ins, systemd-analyze exposure, offline and telemetry settings, the bind address."""

from __future__ import annotations

import difflib

import yaml

from gptossctl.adapters.proc_net import listeners
from gptossctl.compliance import replicas
from gptossctl.compliance.evidence import LOOPBACKS, Evidence, cap, dropins, parse_env, read_text, shown
from gptossctl.compliance.invariants import env_allowlist_problems, unit_directive_problems
from gptossctl.compliance.result import CheckResult
from gptossctl.install.release import CONFIG, ENV_FILE, UNIT_COPY


def _diff(expected: str, actual: str, name: str) -> list[str]:
    return [ln.rstrip("\n") for ln in difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                                           f"approved {name}", f"installed {name}", n=0, lineterm="")
            if not ln.startswith(("---", "+++", "@@"))]


def check_unit(ev: Evidence) -> CheckResult:
    if ev.rec.replicated:
        return replicas.check_unit(ev)
    unit_path = ev.layout.unit_path
    locs: tuple[str, ...] = (ev.live(unit_path),)
    installed = read_text(unit_path)
    if installed is None:
        return CheckResult("config.unit", "fail", (f"{ev.live(unit_path)} is missing",), locs)
    if ev.rendered is None:
        return CheckResult("config.unit", "fail", (ev.render_error or "no approved unit",
                                                   *unit_directive_problems(ev)), locs)
    bad = unit_directive_problems(ev)
    expected = ev.rendered["unit"]
    if installed != expected:
        bad += [f"{ev.live(unit_path)} differs from the unit rendered from the signed template:"]
        bad += _diff(expected, installed, "unit")
    if read_text(ev.release / UNIT_COPY) != expected:
        bad.append(f"{ev.live(ev.release / UNIT_COPY)} differs from the approved rendering")
    extra = dropins(ev.layout)
    if extra:
        bad += [f"drop-in {ev.live(p)} changes the unit" for p in extra]
        locs += tuple(ev.live(p) for p in extra)
    if ev.systemd.live:
        props = ev.systemd.show(ev.layout.unit_name, "NeedDaemonReload", "FragmentPath")
        if props.get("NeedDaemonReload") == "yes":
            bad.append("systemd runs a different unit than the file on disk (daemon-reload pending)")
        if props.get("FragmentPath") not in (None, "", str(ev.layout.live_path(unit_path))):
            bad.append(f"systemd loads the unit from {props['FragmentPath']}, not {ev.live(unit_path)}")
    if bad:
        return CheckResult("config.unit", "fail", cap(bad), locs)
    return CheckResult("config.unit", "pass", (f"{ev.live(unit_path)} is exactly the approved rendering "
                                               f"of release {ev.rec.version}; no drop-ins",), locs)


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
