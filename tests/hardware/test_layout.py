"""Replica layouts proposed by the hardware check, on real captures, through the console script.

Multi-GPU servers are built from real single-GPU captures: the `<gpu>` element of the lent H100's
`nvidia-smi -q -x` (tests/data/h100-lease) repeated with its own index, bus id and UUID, as an 8-GPU
HGX capture lists them; MIG slices come from the A100 capture with MIG on and from the `nvidia-smi -L`
listing of an 8x H100 node split into 1g.10gb slices.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gptossctl.adapters.captures import parse_nvidia_smi_csv, parse_nvidia_smi_xml
from gptossctl.errors import UsageError
from gptossctl.hardware.check import Requirements, check_models
from gptossctl.hardware.inventory import Gpu, Inventory, MigSlice
from gptossctl.hardware.layout import NO_OVERRIDES, LayoutRequest
from gptossctl.hardware.profiles import load_profiles
from tests.conftest import FIXTURES

GPU = FIXTURES / "gpu"
EXPORTER = GPU / "nvidia_gpu_exporter"
H100_XML = Path(__file__).resolve().parents[1] / "data" / "h100-lease" / "h100-nvidia-smi-q.xml"
CLI = Path(sys.executable).with_name("gptossctl")
# The slice sizes a whole H100 80GB reports under MIG (fixtures/gpu/SOURCES.md).
H100_SLICE_MIB = {"1g.10gb": 9984, "2g.20gb": 20096, "3g.40gb": 40448}


def multiply_xml(src: Path, n: int, out: Path) -> Path:
    """An n-GPU `nvidia-smi -q -x` from a one-GPU capture: each copy with its own index, bus id and UUID."""
    text = src.read_text()
    start, end = text.index("<gpu id="), text.rindex("</gpu>") + len("</gpu>")
    one = text[start:end]
    bus = re.search(r'<gpu id="([^"]+)"', one)
    uuid = re.search(r"<uuid>(GPU-[0-9a-f-]+)</uuid>", one)
    assert bus and uuid
    copies = []
    for i in range(n):
        g = one.replace(bus.group(1), f"00000000:{0x18 + 0x10 * i:02X}:00.0")
        g = re.sub(r"<minor_number>\d+</minor_number>", f"<minor_number>{i}</minor_number>", g)
        copies.append(g.replace(uuid.group(1), f"{uuid.group(1)[:-2]}{i:02d}"))
    doc = text[:start] + "\n".join(copies) + text[end:]
    out.write_text(re.sub(r"<attached_gpus>\d+</attached_gpus>", f"<attached_gpus>{n}</attached_gpus>", doc))
    return out


def multiply_csv(src: Path, n: int, out: Path) -> Path:
    """An n-GPU `--query-gpu` CSV from a one-GPU capture, each row with its own index, PCI bus id and UUID
    (a capture that lists one GPU twice is refused)."""
    rows = list(csv.reader(io.StringIO(src.read_text())))
    header, row = rows[0], rows[1]
    names = [h.strip().split(" [")[0] for h in header]
    own = {"index": " {i}", "pci.bus_id": " 00000000:{i:02x}:00.0", "uuid": " GPU-00000000-0000-0000-0000-{i:012d}"}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for i in range(n):
        w.writerow([own[names[j]].format(i=i) if names[j] in own else c for j, c in enumerate(row)])
    out.write_text(buf.getvalue())
    return out


def hw(*args: str) -> tuple[int, dict[str, Any]]:
    """`gptossctl hw check ... --json` through the installed console script."""
    res = subprocess.run([str(CLI), "hw", "check", *args, "--json"], capture_output=True, text=True, timeout=120, check=False)
    doc = json.loads(res.stdout)
    assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == res.returncode, res.stderr
    return res.returncode, doc


@pytest.fixture(scope="module")
def h100x8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return multiply_xml(H100_XML, 8, tmp_path_factory.mktemp("caps") / "h100x8.xml")


def _disjoint(groups: list[list[int]]) -> bool:
    flat = [g for grp in groups for g in grp]
    return len(flat) == len(set(flat))


# ---------------------------------------------------------------- through the console script


def test_8x_h100_runs_eight_120b_replicas_at_tp1(h100x8: Path) -> None:
    code, doc = hw("--nvidia-smi-xml", str(h100x8), "--model", "gpt-oss-120b")
    assert code == 0
    data = doc["data"]
    assert {"inventory", "requirements", "models", "layout"} <= set(data)  # nothing that was there is lost
    layout = data["layout"]
    assert (layout["profile"], layout["replicas"], layout["tensor_parallel_size"]) == ("hopper-120b", 8, 1)
    assert layout["replica_gpus"] == [[i] for i in range(8)]
    assert [a["gpu_uuids"][0][-2:] for a in layout["assignments"]] == [f"{i:02d}" for i in range(8)]
    assert layout["reason"].startswith("8 x TP1: one GPU per replica") and "72.3 GiB" in layout["reason"]
    assert data["models"][0]["layout"] == layout and layout["unused"] == []


def test_concurrency_a_gpu_cannot_hold_makes_4_replicas_at_tp2(h100x8: Path) -> None:
    code, doc = hw("--nvidia-smi-xml", str(h100x8), "--model", "gpt-oss-120b", "--concurrency", "4")
    layout = doc["data"]["layout"]
    assert code == 0 and (layout["replicas"], layout["tensor_parallel_size"]) == (4, 2)
    assert layout["replica_gpus"] == [[0, 1], [2, 3], [4, 5], [6, 7]] and _disjoint(layout["replica_gpus"])
    # The reason names the TP1 need that did not fit: 60.8 weights + 18.0 KV (4 x 128k) + 2.5 > 75.7 budget.
    assert "at TP1 a replica needs 81.3 GiB" in layout["reason"] and "75.7 GiB budget" in layout["reason"]
    assert layout["concurrency_per_replica"] == 4 and layout["overrides"]["concurrency"] == 4


def test_a_shorter_context_brings_the_same_concurrency_back_to_tp1(h100x8: Path) -> None:
    code, doc = hw("--nvidia-smi-xml", str(h100x8), "--model", "gpt-oss-120b", "--concurrency", "4",
                   "--max-model-len", "32768")
    layout = doc["data"]["layout"]
    assert code == 0 and (layout["replicas"], layout["tensor_parallel_size"], layout["max_model_len"]) == (8, 1, 32768)


@pytest.mark.parametrize("args, replicas, tp, spare", [
    (("--tp", "2"), 4, 2, 0),
    (("--tp", "4"), 2, 4, 0),
    (("--replicas", "3"), 3, 1, 5),
    (("--replicas", "2", "--tp", "2"), 2, 2, 2),
])
def test_overrides_within_what_fits(h100x8: Path, args: tuple[str, ...], replicas: int, tp: int, spare: int) -> None:
    code, doc = hw("--nvidia-smi-xml", str(h100x8), "--model", "gpt-oss-120b", *args)
    layout = doc["data"]["layout"]
    assert code == 0 and layout["profile"] == "hopper-120b"
    assert (layout["replicas"], layout["tensor_parallel_size"]) == (replicas, tp)
    assert all(len(g) == tp for g in layout["replica_gpus"]) and _disjoint(layout["replica_gpus"])
    assert sum("spare" in u for u in layout["unused"]) == spare
    assert layout["max_replicas"] == 8 // tp


@pytest.mark.parametrize("args, model, why", [
    (("--replicas", "9"), "gpt-oss-120b", "--replicas 9 at tensor parallel 1 needs 9 GPU(s)"),
    (("--tp", "8", "--replicas", "2"), "gpt-oss-120b", "--replicas 2 at tensor parallel 8 needs 16 GPU(s)"),
    (("--tp", "2"), "gpt-oss-20b", "--tp 2 is outside what hopper-20b allows (tensor parallel 1)"),
])
def test_overrides_beyond_what_fits_exit_1_naming_why(h100x8: Path, args: tuple[str, ...], model: str,
                                                       why: str) -> None:
    code, doc = hw("--nvidia-smi-xml", str(h100x8), "--model", model, *args)
    assert code == 1 and doc["status"] == "failed" and doc["data"]["layout"] is None
    (m,) = doc["data"]["models"]
    assert m["chosen"] is None and why in m["reason"]


@pytest.mark.parametrize("args, what", [
    (("--tp", "3"), "--tp 3"), (("--replicas", "0"), "--replicas 0"), (("--concurrency", "-1"), "--concurrency -1"),
    (("--max-model-len", "200000"), "131072 positions"),
])
def test_meaningless_overrides_are_usage_errors(h100x8: Path, args: tuple[str, ...], what: str) -> None:
    code, doc = hw("--nvidia-smi-xml", str(h100x8), *args)
    assert code == 2 and doc["error"]["code"] == "hw.bad_layout" and what in doc["error"]["message"]
    with pytest.raises(UsageError):
        LayoutRequest(tensor_parallel=6)


def test_eight_l40s_split_120b_into_four_tp2_replicas(tmp_path: Path) -> None:
    caps = multiply_csv(EXPORTER / "linux-x86_64__nvidia-l40s__595.80__idle-query-gpu.csv", 8, tmp_path / "l40s.csv")
    code, doc = hw("--nvidia-smi-csv", str(caps), "--model", "gpt-oss-120b")
    layout = doc["data"]["layout"]
    assert code == 0 and (layout["profile"], layout["replicas"], layout["tensor_parallel_size"]) == ("l40s-120b", 4, 2)
    assert "at TP" not in layout["reason"]  # TP2 is this profile's smallest size, not a memory verdict
    code, doc = hw("--nvidia-smi-csv", str(caps), "--model", "gpt-oss-20b")
    assert code == 0 and (doc["data"]["layout"]["replicas"], doc["data"]["layout"]["tensor_parallel_size"]) == (8, 1)


def test_eight_v100s_get_no_layout() -> None:
    code, doc = hw("--nvidia-smi-xml", str(GPU / "guancecloud-datakit" / "gtx-8card.xml"))
    assert code == 1 and doc["data"]["layout"] is None
    assert all(m["layout"] is None for m in doc["data"]["models"])


def test_profiles_list_takes_the_same_overrides(h100x8: Path) -> None:
    res = subprocess.run([str(CLI), "profiles", "list", "--nvidia-smi-xml", str(h100x8), "--model", "gpt-oss-120b",
                          "--tp", "2"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "4 x TP2" in res.stdout.replace("\n", " ")
    res = subprocess.run([str(CLI), "profiles", "list", "--nvidia-smi-xml", str(h100x8), "--replicas", "0"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2


# ---------------------------------------------------------------- MIG, busy GPUs, CPU (real captures, in Python)


def _check(inv: Inventory, model: str, request: LayoutRequest = NO_OVERRIDES, cuda: str = "13.0"):  # type: ignore[no-untyped-def]
    return check_models(inv, load_profiles(), [model], Requirements(cuda_line=cuda), request).models[0]


def test_mig_slices_each_serve_one_20b_replica_never_tensor_parallel() -> None:
    inv = parse_nvidia_smi_xml(GPU / "telegraf" / "nvidia_smi__a100-sxm4-v12.xml")  # 4 slices of 19968 MiB
    m = _check(inv, "gpt-oss-20b", cuda="12.2")
    layout = m.layout
    assert layout is not None and (len(layout.replicas), layout.tensor_parallel) == (4, 1)
    assert {r.gpus for r in layout.replicas} == {(inv.gpus[0].index,)}  # the capture's one GPU (minor 1)
    assert len({r.mig_device for r in layout.replicas}) == 4 and all(r.mig_device for r in layout.replicas)
    assert "one replica per MIG slice" in layout.reason
    assert _check(inv, "gpt-oss-20b", LayoutRequest(tensor_parallel=2), cuda="12.2").chosen is None
    assert _check(inv, "gpt-oss-120b", cuda="12.2").layout is None  # 120b fits no slice


def _h100_mig_node() -> Inventory:
    """The 8x H100 node of `nvidia-smi -L` (every GPU in seven 1g.10gb slices), sized from the lease capture."""
    h100 = parse_nvidia_smi_xml(H100_XML).gpus[0]
    listing = (EXPORTER / "h100x8-mig-1g10gb__nvidia-smi-L__list_gpus.txt").read_text()
    gpus: list[Gpu] = []
    for block in re.split(r"(?m)^(?=GPU \d+:)", listing):
        head = re.match(r"GPU (\d+): (.+?) \(UUID: (GPU-[^)]+)\)", block)
        if head:
            slices = tuple(MigSlice(f"{p} device {d}", H100_SLICE_MIB[p])
                           for p, d in re.findall(r"MIG (\S+)\s+Device\s+(\d+):", block))
            gpus.append(replace(h100, index=int(head.group(1)), name=head.group(2), uuid=head.group(3),
                                mig_enabled=True, mig_slices=slices, memory_free_mib=None))
    return Inventory("nvidia-smi -L", tuple(gpus), "590.48.01", "13.1")


def test_h100_node_in_1g10gb_slices_holds_no_20b_and_says_why() -> None:
    inv = _h100_mig_node()
    assert len(inv.gpus) == 8 and sum(len(g.mig_slices) for g in inv.gpus) == 56
    m = _check(inv, "gpt-oss-20b")
    assert m.chosen is None and "short by" in m.reason  # 9984 MiB slices cannot hold 12.8 GiB of weights


def test_mixed_mig_slices_serve_20b_on_those_that_hold_it() -> None:
    h100 = parse_nvidia_smi_xml(H100_XML).gpus[0]
    sliced = replace(h100, mig_enabled=True, memory_free_mib=None, mig_slices=tuple(
        MigSlice(name, H100_SLICE_MIB[name]) for name in ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")))
    whole = replace(h100, index=1)
    m = _check(Inventory("test", (sliced, whole), "580.159.04", "13.0"), "gpt-oss-20b")
    layout = m.layout
    assert layout is not None and layout.profile == "hopper-20b"
    assert [(r.gpus, r.mig_device) for r in layout.replicas] == [((0,), "3g.40gb"), ((1,), None)]
    assert sum("exceeds" in u for u in layout.unused) == 3  # 2g.20gb and both 1g.10gb are too small for it


def test_a_busy_gpu_is_left_out_of_the_layout_with_the_reason() -> None:
    idle = parse_nvidia_smi_xml(H100_XML).gpus[0]
    busy = parse_nvidia_smi_csv(EXPORTER / "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01__load-query-gpu.csv").gpus[0]
    gpus = tuple(replace(busy if i == 3 else idle, index=i, uuid=None) for i in range(8))
    layout = _check(Inventory("test", gpus, "590.48.01", "13.1"), "gpt-oss-120b").layout
    assert layout is not None and [r.gpus for r in layout.replicas] == [(i,) for i in (0, 1, 2, 4, 5, 6, 7)]
    assert len(layout.unused) == 1 and layout.unused[0].startswith("GPU 3:") and "already in use" in layout.unused[0]
    # At TP2 the busy GPU also breaks its pair: 3 groups of two, GPU 7 left over.
    layout2 = _check(Inventory("test", gpus, "590.48.01", "13.1"), "gpt-oss-120b", LayoutRequest(tensor_parallel=2)).layout
    assert layout2 is not None and [r.gpus for r in layout2.replicas] == [(0, 1), (2, 4), (5, 6)]
    assert any("left over" in u for u in layout2.unused)


def test_two_l4_serve_two_20b_replicas_and_no_120b() -> None:
    inv = parse_nvidia_smi_xml(GPU / "datarhei-core" / "query2_2xL4.xml")  # driver 555: a CUDA 12.4 bundle
    layout = _check(inv, "gpt-oss-20b", cuda="12.4").layout
    assert layout is not None and [r.gpus for r in layout.replicas] == [(0,), (1,)] and layout.profile == "24gb-20b"
    assert _check(inv, "gpt-oss-120b", cuda="12.4").chosen is None  # 2 x 22.5 GiB cannot hold 60.8 GiB


def test_cpu_profile_is_one_replica_per_host_unless_asked() -> None:
    from gptossctl.hardware.inventory import HostFacts

    inv = Inventory("host", (), host=HostFacts("x86_64", "2.36", "3.11.2", 24000, {}))
    m = _check(inv, "tiny")
    assert m.layout is not None and (len(m.layout.replicas), m.layout.replicas[0].gpus) == (1, ())
    # More replicas only when asked (tests and demos of the router: they share the cores); never TP > 1.
    two = _check(inv, "tiny", LayoutRequest(replicas=2)).layout
    assert two is not None and [r.index for r in two.replicas] == [0, 1] and "share the cores" in two.reason
    assert _check(inv, "tiny", LayoutRequest(tensor_parallel=2)).chosen is None


def test_layout_module_is_pure() -> None:
    code = ("import sys, gptossctl.hardware.layout, gptossctl.hardware.check; "
            "print(sorted(m for m in ('typer', 'rich', 'subprocess', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
