"""The whole way (`gptossctl demo`, what `bash scripts/demo.sh` runs): gpt-oss's own serving path, end to end.

Connected side (this machine): two keys -> the tiny harmony gpt-oss built and taught offline -> a bundle with
vLLM's wheels packed from its recipe, co-signed, verified 2-of-2, one flipped bit refused -> the hardware check.
Air-gapped side (a Debian container booted with systemd, no network but loopback; the bundle and gptossctl's
wheels mounted read-only like removable media): gptossctl bootstrapped from wheels -> `install` builds vLLM's
environment from the bundle's own wheels and serves the model under the hardened unit, behind the router with a
TLS listener from the demo's site CA -> `smoke` with every harmony check on the host side -> a consumer key ->
`canary run` on the demo suite through the TLS listener with that key, and its HTML report -> `usage` counts the
consumer's requests -> `compliance check` -> an upgrade whose profile vLLM refuses, rolled back by itself while the
first release keeps answering.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptossctl.adapters.nspawn import Container, can_boot
from gptossctl.bundle.sign import cosign_bundle
from gptossctl.demo.harmony import build_tiny_harmony, write_recipe
from gptossctl.demo.signing import SIGNERS, cosign_and_verify, make_keys, pack, tamper_refused
from gptossctl.demo.sitetls import LISTEN_HOST, make_site_tls
from gptossctl.demo.staged import hw_check
from gptossctl.errors import CheckFailed, EnvironmentNotReady, UsageError
from gptossctl.fsutil import parse_json
from gptossctl.install.steps import Steps
from gptossctl.resources import data_dir

CLI = "/opt/gptossctl/bin/gptossctl"
CANARY_DIR = "/var/lib/gptoss-demo/canary"
HEALTH_TIMEOUT = "10m"
LISTEN = f"{LISTEN_HOST}:8443"  # the site's TLS listener (the container has no other interface)
CONSUMER = "demo-team"
CONSUMER_KEY = "/root/demo-team.key"


@dataclass(frozen=True)
class FullInputs:
    wheelhouse: Path  # vLLM's wheels for this machine: the bundle's Python stack
    bootstrap: Path  # gptossctl's wheel and its dependencies: what the air-gapped host installs the CLI from


@dataclass
class FullOutcome:
    smoke: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None
    compliance: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)


def check_inputs(inputs: FullInputs | None) -> FullInputs:
    why = can_boot()
    if why is not None:
        raise EnvironmentNotReady(f"the full demo boots a systemd container here: {why}", code="demo.no_container",
                                  hint="run as root with systemd-container and debootstrap (bash scripts/demo.sh "
                                       "installs them), or run the quick path: gptossctl demo --staged")
    if inputs is None or not inputs.wheelhouse.is_dir() or not inputs.bootstrap.is_dir():
        raise UsageError("the full demo needs vLLM's wheels and gptossctl's wheels", code="demo.no_wheels",
                         hint="run bash scripts/demo.sh (it prepares both), or pass --wheelhouse and --bootstrap-wheels "
                              "(python scripts/demo_wheels.py prints them)")
    return inputs


def run_full(out: Path, inputs: FullInputs, steps: Steps, outcome: FullOutcome) -> None:
    keys = make_keys(out, steps)
    work = out / "work"
    with steps("build tiny harmony gpt-oss", "building the tiny harmony gpt-oss (o200k_harmony vocab) and teaching it") as d:
        built = build_tiny_harmony(work / "tiny-gpt-oss-harmony")
        recipe = write_recipe(work)
        t = built.training
        d.append(f"{built.parameters / 1e6:.1f} M parameters, {built.lessons} lessons learned in {t.seconds:.0f} s "
                 f"({t.passes} passes, worst loss {t.worst_loss:.4f})")
    bundles = out / "bundles"
    v1 = pack(recipe, bundles / "v1", keys, steps, wheelhouse=inputs.wheelhouse, version=1)
    cosign_and_verify(v1, keys, steps)
    tamper_refused(v1, keys, out, steps)
    hw_check(v1, out, steps)
    with steps("site TLS", "the site CA and the listener's certificate (a site brings its own)") as d:
        make_site_tls(out / "tls")
        d.append(f"ECDSA P-256, for {LISTEN_HOST}, valid 397 days: {out / 'tls'}")
    binds = {bundles: "/media/bundles", out / "keys": "/media/keys", inputs.bootstrap: "/media/wheels",
             out / "tls": "/media/tls"}
    with _container(out, binds, steps) as box:
        _bootstrap(box, steps)
        instance = _install(box, "v1", steps)
        outcome.smoke = _smoke(box, instance, steps)
        _consumer(box, instance, steps)
        outcome.canary = _canary(box, instance, out, steps, outcome)
        outcome.usage = _usage(box, instance, steps)
        outcome.compliance = _compliance(box, steps)
        v2 = pack(_broken_recipe(work), bundles / "v2", keys, steps, wheelhouse=inputs.wheelhouse, version=2,
                  name="bundle pack v2 (a profile vLLM refuses)")
        with steps("bundle sign v2", f"co-signing release 2 as the {SIGNERS[1]}") as d:
            d.append(f"{len(cosign_bundle(v2, keys.signers[SIGNERS[1]]).signers)} signatures")
        _failed_upgrade(box, instance, steps)


@contextmanager
def _container(out: Path, binds: dict[Path, str], steps: Steps) -> Iterator[Container]:
    box: Container | None = None
    try:
        with steps("systemd container", "booting Debian with systemd, no network but loopback") as d:
            work = out / "container"
            work.mkdir()
            box = Container.from_cache(work, binds, machine=f"gptoss-demo-{os.getpid()}")
            box.boot()
            # The distribution's own nginx site is not needed: the router runs under its own unit.
            box.run("systemctl", "disable", "--now", "nginx.service", check=False)
            d.append(f"systemd is {box.run('systemctl', 'is-system-running', check=False).stdout.strip()}; "
                     f"interfaces: {' '.join(_interfaces(box))}")
        yield box
    finally:
        if box is not None:
            (out / "journal.txt").write_text(box.run("journalctl", "--no-pager", "-n", "300", check=False).stdout
                                             if box.init_pid else "")
            box.shutdown()


def _interfaces(box: Container) -> list[str]:
    return sorted(p.name for p in Path(f"/proc/{box.init_pid}/root/sys/class/net").iterdir())


def _cli(box: Container, *args: str, expect: tuple[int, ...] = (0,),
         env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run gptossctl inside the container with --json; its one result document."""
    res = box.run("env", *(f"{k}={v}" for k, v in (env or {}).items()), CLI, *args, "--json", check=False)
    try:
        doc = parse_json(res.stdout, where=f"gptossctl {args[0]} in the container", what="result document")
    except UsageError:
        raise CheckFailed(f"gptossctl {' '.join(args[:2])} printed no result document (exit {res.returncode})",
                          code="demo.container_cli", hint=res.stderr[-800:]) from None
    if res.returncode not in expect:
        err = doc.get("error") or {}
        raise CheckFailed(f"gptossctl {' '.join(args[:2])} exited {res.returncode}: {err.get('message', '')}",
                          code="demo.container_cli", findings=[], hint=err.get("hint") or json.dumps(doc)[-800:])
    return res.returncode, doc


def _bootstrap(box: Container, steps: Steps) -> None:
    with steps("bootstrap gptossctl", "uv from the wheelhouse, no index, no network") as d:
        box.run("sh", "-c", "cd /tmp && python3 -m zipfile -e /media/wheels/uv-*.whl uvx && "
                "install -m 0755 uvx/uv-*.data/scripts/uv /usr/local/bin/uv && "
                "uv venv -q --python /usr/bin/python3 /opt/gptossctl && "
                "uv pip install -q --offline --no-index --find-links /media/wheels --python /opt/gptossctl/bin/python "
                "gptossctl")
        d.append(box.run(CLI, "--version").stdout.strip() + " in /opt/gptossctl, installed offline from wheels")


def _install(box: Container, bundle: str, steps: Steps) -> str:
    with steps("install", "verify, release, offline environment from the bundle's wheels, hardened unit, start, "
               "/health, smoke") as d:
        _code, doc = _cli(box, "install", f"/media/bundles/{bundle}", "--trust", "/media/keys/ml-engineer.pub",
                          "--trust", "/media/keys/security-officer.pub", "--threshold", "2", "--yes",
                          "--health-timeout", HEALTH_TIMEOUT, "--listen", LISTEN, "--tls-cert",
                          "/media/tls/server.pem", "--tls-key", "/media/tls/server.key")
        r = doc["data"]
        slow = {s["step"]: s["seconds"] for s in r["steps"]}
        d.append(f"release {r['version']} of {r['instance']} serving at {r['endpoint']} under {r['unit']}, open on "
                 f"https://{LISTEN} (environment {slow.get('environment', 0):.0f} s, healthy after "
                 f"{slow.get('health r0', 0):.0f} s)")
    return str(r["instance"])


def _consumer(box: Container, instance: str, steps: Steps) -> None:
    with steps("consumer key", f"a key for the team {CONSUMER}, written 0600 (never shown in argv or logs)") as d:
        _cli(box, "consumers", "add", CONSUMER, "--instance", instance, "--out", CONSUMER_KEY, "--rps", "100",
             "--burst", "200", "--concurrency", "8")
        d.append(f"{CONSUMER}: key in {CONSUMER_KEY}; the router reloaded gracefully")


def _smoke(box: Container, instance: str, steps: Steps) -> dict[str, Any]:
    with steps("smoke", "gpt-oss's own behaviour: reasoning at each effort, tool calls, harmony markers") as d:
        _code, doc = _cli(box, "smoke", "--url", "http://127.0.0.1:8000", "--router", "--api-key-file",
                          f"/etc/gptoss/{instance}/api-key")
        checks = doc["data"]["checks"]
        passed = [c["id"] for c in checks if c["status"] == "pass"]
        d.append(f"{len(passed)} of {len(checks)} checks passed: {', '.join(passed)}")
    return dict(doc["data"])


def _canary(box: Container, instance: str, out: Path, steps: Steps, outcome: FullOutcome) -> dict[str, Any]:
    """The demo suite asks one question the model was never taught and one it was taught to answer unsafely:
    the canary must catch both (exit 1), and write its reports."""
    with steps("canary", f"the demo suite through https://{LISTEN} with {CONSUMER}'s key: correctness, "
               "edits-to-accept, safety, latency; HTML report") as d:
        # The client trusts the site CA the way any OpenSSL or httpx client does: SSL_CERT_FILE.
        code, doc = _cli(box, "canary", "run", "--url", f"https://{LISTEN}", "--api-key-file", CONSUMER_KEY,
                         "--suite", "demo", "--out", CANARY_DIR, expect=(0, 1),
                         env={"SSL_CERT_FILE": "/media/tls/ca.pem"})
        reports = out / "canary"
        shutil.copytree(box.path(CANARY_DIR), reports)
        outcome.files.update({p.name: str(p) for p in sorted(reports.iterdir())})
        reasons = doc["data"].get("reasons", [])
        d.append(f"exit {code}, report {reports / 'report.html'}" + (f"; caught: {'; '.join(reasons)}" if reasons else ""))
    return {"exit_code": code, "reasons": reasons, "files": outcome.files, "url": f"https://{LISTEN}",
            "consumer": CONSUMER}


def _usage(box: Container, instance: str, steps: Steps) -> dict[str, Any]:
    with steps("usage", "the listener's access log, per consumer") as d:
        _code, doc = _cli(box, "usage", "--instance", instance, "--by", "consumer")
        rows = doc["data"].get("rows", [])
        d.append("; ".join(f"{r.get('key')}: {r.get('requests')} requests, {r.get('errors')} errors"
                           for r in rows) or "no request recorded")
    return dict(doc["data"])


def _compliance(box: Container, steps: Steps) -> dict[str, Any]:
    with steps("compliance check", "every compliance check on the running instance") as d:
        _code, doc = _cli(box, "compliance", "check")
        n = doc["data"]["counts"]
        d.append(f"{n['pass']} passed, {n['fail']} failed, {n['warn']} warnings")
    return dict(doc["data"])


def _broken_recipe(work: Path) -> Path:
    """Release 2: the same model, with a site profile vLLM refuses at start (a context longer than the model's)."""
    profile = (data_dir("profiles") / "cpu-tiny-harmony.yaml").read_text()
    (work / "cpu-tiny-harmony-broken.yaml").write_text(
        profile.replace("name: cpu-tiny-harmony", "name: cpu-tiny-harmony-broken")
        .replace("max-model-len: 2048", "max-model-len: 1000000"))
    recipe = (work / "tiny-harmony.yaml").read_text().replace("  - cpu-tiny-harmony\n",
                                                              "  - ./cpu-tiny-harmony-broken.yaml\n")
    out = work / "tiny-harmony-v2.yaml"
    out.write_text(recipe)
    return out


def _failed_upgrade(box: Container, instance: str, steps: Steps) -> None:
    with steps("failing upgrade rolled back", "installing release 2, whose profile vLLM refuses") as d:
        code, doc = _cli(box, "install", "/media/bundles/v2", "--trust", "/media/keys/ml-engineer.pub",
                         "--trust", "/media/keys/security-officer.pub", "--threshold", "2", "--yes",
                         "--health-timeout", HEALTH_TIMEOUT, expect=(1,))
        rollback = next((f["message"] for f in doc["findings"] if f["code"] == "install.rollback"), "")
        if not doc["error"]["code"].startswith("install.") or "restored and healthy" not in rollback:
            raise CheckFailed(f"release 2 failed as {doc['error']['code']}, not at start; rollback: {rollback!r}",
                              code="demo.upgrade", hint=doc["error"].get("hint"))
        d.append(f"release 2 did not come up ({doc['error']['code']}): {rollback}")
    with steps("release 1 still answering", "status and the smoke test against the running service") as d:
        _code, status = _cli(box, "status")
        (row,) = status["data"]["instances"]
        if row["version"] != 1 or row["health"] != 200:
            raise CheckFailed(f"after the failed upgrade: release {row['version']}, /health {row['health']}",
                              code="demo.rollback")
        _smoke(box, instance, Steps())
        d.append(f"release {row['version']} is current, /health {row['health']}, smoke passed again")
