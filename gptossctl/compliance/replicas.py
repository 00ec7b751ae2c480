"""The checks of an instance with several replicas: the same rules, over every unit that serves it.

Each replica has its own unit, vLLM config and 0600 environment file; the router has its unit, the
configuration it runs (and the release's copy), and the key as its credential. All of them are compared with
a fresh rendering from the release record and the signed templates and profile (evidence.render_replicated);
live, the key must be enforced at the router and at every replica, and every unit must run and answer.
The families' modules (configuration, access, provenance) hand over here when the release has replicas.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from gptossctl.adapters.openai_http import health, key_enforced
from gptossctl.adapters.proc_net import listeners
from gptossctl.compliance.evidence import LOOPBACKS, Evidence, cap, parse_env, read_text, shown
from gptossctl.compliance.invariants import env_allowlist_problems
from gptossctl.compliance.result import CheckResult
from gptossctl.errors import UsageError
from gptossctl.install.release import ROUTER_CONFIG, ROUTER_UNIT_COPY, unit_release
from gptossctl.install.router import credential_path, render_router_config, router_key_map, runtime_dir

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
NO_TELEMETRY = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def units(ev: Evidence) -> list[tuple[str, Path, str]]:
    """(unit name, installed path, the release's copy) of every replica, then the router."""
    out = [(ev.layout.replica_unit_name(r.index), ev.layout.replica_unit_path(r.index), r.files[2])
           for r in ev.rec.replicas]
    return out + [(ev.layout.router_unit_name, ev.layout.router_unit_path, ROUTER_UNIT_COPY)]


def diff(expected: str, actual: str, name: str) -> list[str]:
    return [ln.rstrip("\n") for ln in difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                                           f"approved {name}", f"installed {name}", n=0, lineterm="")
            if not ln.startswith(("---", "+++", "@@"))]


def _result(rule: str, bad: list[str], good: list[str], locs: list[str]) -> CheckResult:
    return CheckResult(rule, "fail" if bad else "pass", cap(bad or good), tuple(dict.fromkeys(locs)))


def _env_problems(ev: Evidence, name: str) -> list[str]:
    assert ev.rendered is not None
    text = ev.replica_envs.get(name)
    if text is None:
        return [f"{name} is missing or unreadable"]
    if text == ev.rendered[name]:
        return []
    want, got = parse_env(ev.rendered[name]), parse_env(text)
    return [f"{name}: {k}: approved {shown(k, want.get(k))}, found {shown(k, got.get(k))}"
            for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)] \
        or [f"{name}: comments or layout differ from the approved rendering"]


def _router_config_problems(ev: Evidence) -> list[str]:
    assert ev.rendered is not None
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
                  *diff(expected, running, ROUTER_CONFIG)]
    return bad


def _with_down(ev: Evidence, down: set[int]) -> str:
    return render_router_config(instance=ev.layout.instance, host=ev.rec.host, port=ev.rec.port,
                                replicas=ev.rec.replicas, key_map=credential_path(ev.layout),
                                runtime=runtime_dir(ev.layout), down=down)


def check_release_files(ev: Evidence) -> CheckResult:
    locs = [ev.live(ev.release / n) for r in ev.rec.replicas for n in r.files[:2]]
    locs += [ev.live(ev.release / ROUTER_CONFIG), ev.live(ev.layout.router_config)]
    if ev.rendered is None:
        return CheckResult("config.release_files", "fail", (ev.render_error or "no approved rendering",
                                                            *env_allowlist_problems(ev)), tuple(locs))
    bad: list[str] = env_allowlist_problems(ev)
    for r in ev.rec.replicas:
        config = read_text(ev.release / r.files[0])
        if config != ev.rendered[r.files[0]]:
            bad += [f"{r.files[0]} is missing"] if config is None else \
                [f"{r.files[0]} differs from the signed profile's rendering:",
                 *diff(ev.rendered[r.files[0]], config, r.files[0])]
        bad += _env_problems(ev, r.files[1])
    bad += _router_config_problems(ev)
    return _result("config.release_files", bad, [
        f"the configs and environment files of {len(ev.rec.replicas)} replicas and the router's configuration "
        f"are the approved rendering of profile {ev.rec.profile}"], locs)


def check_exposure(ev: Evidence) -> CheckResult:
    bad: list[str] = []
    good: list[str] = []
    locs: list[str] = []
    for name, path, _copy in units(ev):
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
    """Every unit denies all addresses but loopback."""
    bad = []
    for name, path, _copy in units(ev):
        lines = [ln.strip() for ln in (read_text(path) or "").splitlines()]
        if "IPAddressDeny=any" not in lines:
            bad.append(f"{name} lacks IPAddressDeny=any")
        allowed = [ln.split("=", 1)[1].strip() for ln in lines if ln.startswith("IPAddressAllow=")]
        if any(a not in ("localhost", "127.0.0.1", "::1", "127.0.0.0/8") for a in allowed):
            bad.append(f"{name} allows traffic beyond loopback: IPAddressAllow={' '.join(allowed)}")
    return bad


def _env_rule(ev: Evidence, rule: str, want: dict[str, str], forbidden: str, extra: list[str]) -> CheckResult:
    bad = list(extra)
    for name, text in ev.replica_envs.items():
        env = parse_env(text) if text is not None else None
        if env is None:
            bad.append(f"{name} is missing or unreadable")
            continue
        bad += [f"{name}: {k}={shown(k, env.get(k))}, required {v}" for k, v in want.items() if env.get(k) != v]
        bad += [f"{name}: {forbidden} is set: it sends data off the host"] if forbidden in env else []
    locs = [ev.live(ev.release / n) for n in ev.replica_envs]
    return _result(rule, bad, [", ".join(f"{k}={v}" for k, v in want.items()) + f" in all {len(ev.replica_envs)} "
                               "replicas"], locs)


def check_offline(ev: Evidence) -> CheckResult:
    res = _env_rule(ev, "config.offline", OFFLINE, "HF_ENDPOINT", _fenced(ev))
    if res.status == "pass":
        return CheckResult(res.id, "pass", (*res.evidence, "every unit: IPAddressDeny=any, IPAddressAllow=localhost"),
                           res.locations)
    return res


def check_usage_stats(ev: Evidence) -> CheckResult:
    return _env_rule(ev, "config.usage_stats", NO_TELEMETRY, "VLLM_USAGE_STATS_SERVER", [])


def _configured_hosts(ev: Evidence) -> list[str]:
    bad = []
    for r in ev.rec.replicas:
        try:
            host = (yaml.safe_load(read_text(ev.release / r.files[0]) or "") or {}).get("host")
        except yaml.YAMLError:
            host = None
        if host not in LOOPBACKS:
            bad.append(f"{r.files[0]} binds {host!r}, not a loopback address")
    listens = re.findall(r"^\s*listen\s+(\S+?);", read_text(ev.layout.router_config) or "", re.M)
    approved = ["127.0.0.1" if ev.rec.host == "localhost" else ev.rec.host]
    hosts = [lst.rsplit(":", 1)[0].strip("[]") for lst in listens]
    if hosts != approved:
        bad.append(f"the router listens on {', '.join(listens) or 'nothing'}, install approved "
                   f"{approved[0]}:{ev.rec.port}")
    return bad


def check_bind(ev: Evidence) -> CheckResult:
    bad = _configured_hosts(ev)
    ports = [ev.rec.port, *(r.port for r in ev.rec.replicas)]
    good = [f"the router listens on {ev.rec.host}:{ev.rec.port}; replicas on 127.0.0.1:{ports[1]}-{ports[-1]}"]
    if ev.systemd.live:
        for port in ports:
            outside = [a for a in listeners(port) if not (a.startswith("127.") or a == "::1")]
            bad += [f"port {port} is listening on {', '.join(outside)}"] if outside else []
        good.append(f"listening on loopback only on ports {', '.join(map(str, ports))} (/proc/net/tcp)")
    locs = [ev.live(ev.layout.router_config), *(ev.live(ev.release / r.files[0]) for r in ev.rec.replicas)]
    return _result("config.bind", bad, good, locs)


def _probe(url: str, key: str, who: str) -> tuple[list[str], list[str]]:
    answer = key_enforced(url, key)
    if isinstance(answer, str):
        return [f"live probe of {who} {url}/v1/models failed: {answer}"], []
    line = f"live probe of {who}: GET /v1/models without a key {answer[0]}, with the key {answer[1]}"
    return ([line], []) if answer != (401, 200) else ([], [line])


def check_api_key(ev: Evidence) -> CheckResult:
    locs = [ev.live(ev.layout.api_key), ev.live(ev.layout.router_key), *(ev.live(ev.release / n) for n in ev.replica_envs)]
    if ev.api_key is None:
        return CheckResult("access.api_key", "fail", (f"{ev.live(ev.layout.api_key)} is missing or unreadable",),
                           tuple(locs))
    bad = [f"VLLM_API_KEY in {n} is absent or not the instance's key" for n, text in ev.replica_envs.items()
           if parse_env(text or "").get("VLLM_API_KEY") != ev.api_key]
    try:
        want = router_key_map(ev.api_key)
    except UsageError as exc:
        want = None
        bad.append(exc.message)
    if want is not None and read_text(ev.layout.router_key) != want:
        bad.append(f"{ev.live(ev.layout.router_key)} (the router's credential) is missing or not the instance's key")
    good = ["every replica's VLLM_API_KEY and the router's credential are the instance's key (value not shown)"]
    if ev.systemd.live and ev.active:
        b, g = _probe(ev.endpoint, ev.api_key, "the router")
        bad, good = bad + b, good + g
        for r in ev.rec.replicas:
            if ev.systemd.active_state(ev.layout.replica_unit_name(r.index)) == "active":
                b, g = _probe(r.endpoint, ev.api_key, f"replica {r.index}")
                bad, good = bad + b, good + g
    elif not bad:
        good.append("router not running: not probed live")
    return _result("access.api_key", bad, good, locs)


def secret_files(ev: Evidence) -> list[tuple[Path, int]]:
    return [(ev.layout.api_key, 0o600), (ev.layout.router_key, 0o600),
            *((ev.release / n, 0o600) for n in ev.replica_envs), (ev.layout.etc, 0o700)]


def check_running(ev: Evidence) -> CheckResult:
    layout, bad, good = ev.layout, list[str](), list[str]()
    for r in ev.rec.replicas:
        in_unit = unit_release(layout, layout.replica_unit_path(r.index))
        if in_unit != ev.rec.version:
            bad.append(f"replica {r.index} runs release {in_unit}, current is {ev.rec.version}: an install was "
                       "interrupted")
    locs = [ev.live(path) for _n, path, _c in units(ev)]
    if bad or not ev.systemd.live:
        return _result("service.running", bad, [f"staged tree: {len(ev.rec.replicas)} replica units run release "
                                                f"{ev.rec.version}; not started here"], locs)
    if not ev.active:
        return CheckResult("service.running", "warn", (f"{layout.router_unit_name} is "
                                                       f"{ev.systemd.active_state(layout.router_unit_name)}",),
                           tuple(locs))
    for name, url in [(layout.router_unit_name, ev.endpoint),
                      *((layout.replica_unit_name(r.index), r.endpoint) for r in ev.rec.replicas)]:
        state = ev.systemd.active_state(name)
        code = health(url, timeout=10.0) if state == "active" else None
        line = f"{name} {state}, GET /health {code if code is not None else '-'}"
        (good if code == 200 else bad).append(line)
    return _result("service.running", bad, [f"release {ev.rec.version} on every replica", *good], locs)
