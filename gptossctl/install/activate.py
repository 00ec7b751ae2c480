"""Proving a unit in service: wait for /health (failing fast when vLLM exits), run the smoke test; and the
service's kernel caches, emptied whenever a release is put in service. Putting a serving set in service (and
the previous one back) is install/rolling.py's."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from gptossctl.adapters.openai_http import Endpoint, health
from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import CheckFailed
from gptossctl.install.layout import Layout
from gptossctl.probe.smoke import SmokeOptions, run_smoke

# Where the service keeps the kernels it compiles and later loads: its VLLM_CACHE_ROOT (torch.compile and
# inductor caches) and TRITON_CACHE_DIR under the cache directory, FlashInfer's JIT cache under HOME (the state
# directory). The only places in the service's own directories where code it runs may be (access.permissions),
# and so emptied whenever a release is put in service: what a compromised service planted there does not
# outlive the release it ran under.
KERNEL_CACHES = {"cache": (("vllm",), ("triton",)), "state": ((".cache", "flashinfer"),)}


def kernel_cache_dirs(layout: Layout) -> list[Path]:
    """The kernel caches of the instance and of each of its replicas (whose directories follow the unit's %i)."""
    shapes = {layout.instance}
    for parent in (layout.cache.parent, layout.state.parent):
        if parent.is_dir():
            shapes |= {p.name for p in parent.iterdir() if re.fullmatch(rf"{re.escape(layout.instance)}-r\d+", p.name)}
    out = []
    for name in sorted(shapes):
        shape = Layout(layout.root, name)
        for kind, top in (("cache", shape.cache), ("state", shape.state)):
            out += [top.joinpath(*parts) for parts in KERNEL_CACHES[kind]]
    return out


def wipe_kernel_caches(layout: Layout) -> list[str]:
    """Empty every kernel cache (kernel_cache_dirs) without following a link the service may have put there;
    the service recompiles what it needs at its next start. Returns what was removed (live paths)."""
    removed = []
    for d in kernel_cache_dirs(layout):
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            os.unlink(d)
        elif d.is_dir():
            shutil.rmtree(d, ignore_errors=True)  # fd-based on Linux: never follows a link swapped in meanwhile
        else:
            continue
        removed.append(str(layout.live_path(d)))
    return removed


def wait_healthy(systemd: Systemd, unit: str, url: str, timeout: float, *, poll: float = 2.0) -> str:
    """Wait for GET /health = 200. Fail fast when the unit fails or restarts (vLLM exited). Restarts are counted
    from the first look: a unit systemd restarted by itself earlier (a replica killed) still counts them."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    restarts: int | None = None
    while time.monotonic() < deadline:
        props = systemd.show(unit, "ActiveState", "SubState", "NRestarts", "Result")
        count = int(props.get("NRestarts") or 0)
        restarts = count if restarts is None else restarts
        if props.get("ActiveState") == "failed" or props.get("SubState") == "auto-restart" or count > restarts:
            raise CheckFailed(f"{unit} exited before it was healthy ({props.get('Result', '?')})",
                              code="install.start_failed", hint="the journal tail below says why")
        answer = health(url)
        if answer == 200:
            return f"/health 200 after {timeout - (deadline - time.monotonic()):.0f}s"
        last = f"/health {answer}" if isinstance(answer, int) else answer
        time.sleep(poll)
    raise CheckFailed(f"{unit} not healthy within {timeout:.0f}s ({last})", code="install.health_timeout",
                      hint="a large model can need longer: raise --health-timeout; see the journal tail")


def run_install_smoke(url: str, api_key: str, model: str) -> dict[str, Any]:
    report = run_smoke(Endpoint(url, api_key, timeout=120.0), SmokeOptions(model=model))
    if not report.ok:
        raise CheckFailed("the smoke test failed on the new release", code="install.smoke_failed",
                          findings=report.findings, hint="see the smoke checks in the report")
    return report.to_dict()
