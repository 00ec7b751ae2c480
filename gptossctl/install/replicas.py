"""A release's replicas: which, on which ports, and their files.

The hardware check proposes the layout (hardware.layout: every GPU, or group of `tensor_parallel` GPUs, that
holds one replica; or what --replicas/--tp ask within that). Here it becomes the release's replicas, one or
more: replica k listens on loopback port `--port`+1+k, the router takes `--port`, and each replica gets its
own config, its own 0600 environment file (pinned to its GPUs) and its own unit, rendered from the one verified
release (install/serving.py's `render_set`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gptossctl.errors import UsageError
from gptossctl.hardware.layout import Replica
from gptossctl.install.layout import Layout
from gptossctl.install.release import ReplicaRecord, current_version, read_release

MAX_PORT = 65535


def plan_replicas(replicas: Sequence[Replica], *, port: int, gpus: Sequence[int] = ()) -> tuple[ReplicaRecord, ...]:
    """The release's replicas from the proposed layout; with no layout (the CPU), one replica on `gpus`."""
    if not replicas:
        replicas = (Replica(0, tuple(gpus)),)
    mig = [r for r in replicas if r.mig_device]
    if mig and len(replicas) > 1:
        raise UsageError(f"{len(replicas)} replicas on MIG slices: each needs its slice's MIG UUID in "
                         "CUDA_VISIBLE_DEVICES, which the hardware probe does not report yet",
                         code="install.mig_replicas",
                         hint="serve one replica (--replicas 1), or disable MIG to run one replica per GPU")
    if port + len(replicas) > MAX_PORT:
        raise UsageError(f"port {port} with {len(replicas)} replicas needs ports {port}-{port + len(replicas)}, "
                         f"beyond {MAX_PORT}", code="service.bad_port",
                         hint=f"the router takes --port and replica k --port+1+k: choose a --port at most "
                              f"{MAX_PORT - len(replicas)}")
    return tuple(ReplicaRecord(r.index, port + 1 + r.index, r.gpus, r.uuids) for r in replicas)


def check_names(layout: Layout, replicas: int) -> None:
    """Replica k's unit is gptoss@<instance>-r<k>: refuse an instance whose name or replicas would take another
    installed instance's unit, state and journal."""
    taken = [f"{layout.instance}-r{k}" for k in range(replicas)
             if Layout(layout.root, f"{layout.instance}-r{k}").opt.is_dir()]
    m = re.fullmatch(r"(.+)-r(\d+)", layout.instance)
    if m:
        base = Layout(layout.root, m.group(1))
        cur = current_version(base)
        rec = read_release(base.release(cur)) if cur is not None else None
        if rec is not None and int(m.group(2)) in {r.index for r in rec.replicas}:
            taken.append(f"replica {m.group(2)} of {m.group(1)}")
    if taken:
        raise UsageError(f"instance {layout.instance!r} would share units with {', '.join(taken)}",
                         code="install.instance_collision",
                         hint="name the instance differently (--instance): replica k of instance I runs as "
                              "gptoss@I-r<k>")

