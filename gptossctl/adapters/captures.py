"""Parsers for captured GPU tool output, for reviewing a target that cannot run gptossctl yet.

Accepted: `nvidia-smi -q -x` (XML), `nvidia-smi --query-gpu=... --format=csv` (with header, with or
without units), `rocm-smi --showproductname --showmeminfo vram --json`, `amd-smi static --json`.
Real captures differ between driver and ROCm versions (schema v9 to v13, "N/A" and "Not Found",
`Card Series` / `Card series`, bytes or MiB); every quirk seen in tests/data/gpu is handled or
refused with a message that says how to capture what is needed.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gptossctl.errors import UsageError
from gptossctl.fsutil import decode_text, parse_json, read_bytes
from gptossctl.hardware.inventory import Gpu, Inventory, MigSlice, infer_compute_capability

_MIB = re.compile(r"\s*([0-9]{1,9})\s*(MiB)?\s*")  # matched whole; 9 digits: up to ~950 TiB, any real GPU
MAX_GPU_MIB = 16 << 20  # 16 TiB: a capture claiming more is damaged or made up
MAX_GPUS = 4096
CAPTURE_LIMIT = 64 << 20
_NA = {"", "n/a", "[n/a]", "not found", "[not supported]", "not supported", "none"}
NVIDIA_CSV_HINT = ("capture with: nvidia-smi --query-gpu=index,name,memory.total,memory.free,compute_cap,"
                   "driver_version,mig.mode.current,persistence_mode,pci.bus_id,uuid --format=csv")
ROCM_HINT = "capture with: rocm-smi --showproductname --showmeminfo vram --json (not -a: it has no VRAM totals)"


def _read(path: Path) -> str:
    data = read_bytes(path, what="capture", code="hw.capture_unreadable", limit=CAPTURE_LIMIT)
    return decode_text(data, path=path, what="capture", code="hw.capture_invalid")


def _invalid(path: Path, why: str, hint: str) -> UsageError:
    return UsageError(f"{path.name}: {why}", code="hw.capture_invalid", hint=hint)


def _value(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.strip()
    return None if t.lower() in _NA else t


def _mib(text: str | None) -> int | None:
    v = _value(text)
    m = _MIB.fullmatch(v) if v else None
    return int(m.group(1)) if m and 0 < int(m.group(1)) <= MAX_GPU_MIB else None


def _memory(path: Path, text: str | None, what: str, *, gpu: int) -> int | None:
    """A memory size the capture states: None when it says N/A; a value that is not a size (negative, NaN,
    absurd) is a damaged capture, refused rather than read as "unknown"."""
    v = _value(text)
    if v is None:
        return None
    m = _MIB.fullmatch(v)
    if m is None or int(m.group(1)) > MAX_GPU_MIB or (what == "memory.total" and int(m.group(1)) == 0):
        raise _invalid(path, f"GPU {gpu}: {what} {v[:40]!r} is not a memory size in MiB",
                       "capture again on the target; a capture is used as the tool wrote it")
    return int(m.group(1))


def check_gpus(path: Path, gpus: list[Gpu]) -> tuple[str, ...]:
    """One line per physical GPU: an index or PCI bus id seen twice, or more memory free than there is,
    describes hardware that cannot exist (and would plan several replicas onto one GPU): refused. A UUID seen
    twice on GPUs whose PCI bus ids all differ is an anonymised capture (published ones are): a note."""
    hint = "capture again on the target, unedited: each GPU appears once"
    pcis = [g.pci_bus_id.lower() for g in gpus if g.pci_bus_id]
    for what, values in (("index", [str(g.index) for g in gpus]), ("PCI bus id", pcis),
                         ("UUID", [g.uuid for g in gpus if g.uuid])):
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup and what == "UUID" and len(pcis) == len(gpus):
            return (f"GPU UUID {dup[0][:64]} appears {values.count(dup[0])} times on GPUs with different PCI bus "
                    "ids: an anonymised capture?",)
        if dup:
            raise _invalid(path, f"GPU {what} {dup[0][:64]} appears {values.count(dup[0])} times", hint)
    for g in gpus:
        if g.memory_free_mib is not None and g.memory_free_mib < 0:
            raise _invalid(path, f"GPU {g.index}: more memory used than there is", hint)
        if g.memory_total_mib is not None and g.memory_free_mib is not None and g.memory_free_mib > g.memory_total_mib:
            raise _invalid(path, f"GPU {g.index}: {g.memory_free_mib} MiB free of {g.memory_total_mib} MiB", hint)
    return ()


def _index(text: str | None, default: int) -> int:
    v = _value(text) or ""
    return int(v) if v.isdigit() and len(v) <= 4 else default


def _on_off(text: str | None) -> bool | None:
    v = (_value(text) or "").lower()
    return True if v in ("enabled", "on") else False if v in ("disabled", "off") else None


def _cuda_from_text(text: str | None) -> str | None:
    # Driver 610 appends "[Deprecated ...]" to the CUDA version: keep the number only.
    m = re.match(r"\s*(\d+\.\d+)", text or "")
    return m.group(1) if m else None


def parse_nvidia_smi_xml(path: Path) -> Inventory:
    text = _read(path)
    if "<!ENTITY" in text:  # no entity expansion from a file of unknown origin
        raise _invalid(path, "XML declares entities; refusing to expand them", "capture again with nvidia-smi -q -x")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _invalid(path, f"not well-formed XML ({exc})", "capture with: nvidia-smi -q -x > FILE") from None
    if root.tag != "nvidia_smi_log":
        raise _invalid(path, f"root element is <{root.tag}>, not <nvidia_smi_log>", "capture with: nvidia-smi -q -x")
    gpus = []
    notes = []
    for i, g in enumerate(root.findall("gpu")):
        name = _value(g.findtext("product_name")) or "unknown GPU"
        arch = _value(g.findtext("product_architecture"))
        cc = infer_compute_capability(name, arch)
        slices = tuple(
            MigSlice(f"mig device {_value(m.findtext('index')) or j}", mem)
            for j, m in enumerate(g.findall("mig_devices/mig_device"))
            if (mem := _mib(m.findtext("fb_memory_usage/total"))) is not None
        )
        total = _memory(path, g.findtext("fb_memory_usage/total"), "memory.total", gpu=i)
        if total is None:
            notes.append(f"GPU {i} ({name}) reports no memory size")
        gpus.append(Gpu(
            index=_index(g.findtext("minor_number"), i),
            vendor="nvidia", name=name, memory_total_mib=total,
            memory_free_mib=_memory(path, g.findtext("fb_memory_usage/free"), "memory.free", gpu=i),
            compute_capability=cc, cc_inferred=cc is not None,
            mig_enabled=_on_off(g.findtext("mig_mode/current_mig")), mig_slices=slices,
            persistence_mode=_on_off(g.findtext("persistence_mode")),
            pci_bus_id=_value(g.findtext("pci/pci_bus_id")) or g.get("id"), uuid=_value(g.findtext("uuid")),
        ))
    if not gpus:
        raise _invalid(path, "no <gpu> elements: the capture lists no GPU", "capture on the target with nvidia-smi -q -x")
    notes += check_gpus(path, gpus)
    return Inventory(f"nvidia-smi-xml:{path.name}", tuple(gpus), _value(root.findtext("driver_version")),
                     _cuda_from_text(root.findtext("cuda_version")), None, tuple(notes))


def parse_nvidia_smi_csv(path: Path) -> Inventory:
    try:
        rows = list(csv.reader(io.StringIO(_read(path))))
    except csv.Error as exc:
        raise _invalid(path, f"not CSV ({exc})", NVIDIA_CSV_HINT) from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) > MAX_GPUS + 1:
        raise _invalid(path, f"{len(rows) - 1} GPU lines: more than any host has", NVIDIA_CSV_HINT)
    if len(rows) < 2:
        raise _invalid(path, "needs a header line and one line per GPU", NVIDIA_CSV_HINT)
    # "memory.total [MiB]" -> "memory.total": units in the header are optional (nounits).
    header = [re.sub(r"\s*\[.*\]$", "", c.strip()) for c in rows[0]]
    col = {h: i for i, h in enumerate(header)}
    if "name" not in col or "memory.total" not in col:
        raise _invalid(path, "header lacks name and memory.total (was it captured with --format=csv,noheader?)",
                       NVIDIA_CSV_HINT)

    def cell(row: list[str], key: str) -> str | None:
        i = col.get(key)
        return row[i] if i is not None and i < len(row) else None

    gpus = []
    for n, row in enumerate(rows[1:]):
        name = _value(cell(row, "name")) or "unknown GPU"
        cc_text = _value(cell(row, "compute_cap"))
        m = re.fullmatch(r"([0-9]{1,2})\.([0-9]{1,2})", cc_text or "")
        cc = (int(m.group(1)), int(m.group(2))) if m else infer_compute_capability(name)
        gpus.append(Gpu(
            index=_index(cell(row, "index"), n), vendor="nvidia", name=name[:200],
            memory_total_mib=_memory(path, cell(row, "memory.total"), "memory.total", gpu=n),
            memory_free_mib=_memory(path, cell(row, "memory.free"), "memory.free", gpu=n),
            compute_capability=cc, cc_inferred=m is None and cc is not None,
            mig_enabled=_on_off(cell(row, "mig.mode.current")),
            persistence_mode=_on_off(cell(row, "persistence_mode")),
            pci_bus_id=_value(cell(row, "pci.bus_id")), uuid=_value(cell(row, "uuid")),
        ))
    drivers = sorted(d for r in rows[1:] if (d := _value(cell(r, "driver_version"))))
    notes = check_gpus(path, gpus) + (("the CSV has no MIG slice sizes: capture nvidia-smi -q -x to size MIG "
                                       "slices",) if any(g.mig_enabled for g in gpus) else ())
    return Inventory(f"nvidia-smi-csv:{path.name}", tuple(gpus), drivers[0] if drivers else None, None, None, notes)


_GFX_BY_NAME = (
    (r"MI3(55|50)X", "gfx950"), (r"MI3(00|25)X|MI300A", "gfx942"), (r"MI2(10|50X?)\b|MI250", "gfx90a"),
    (r"MI100", "gfx908"), (r"MI(50|60)\b|Vega 20", "gfx906"),
)
# rocm-smi prints the KFD target version digit by digit ("gfx9010" is gfx90a, "gfx11001" gfx1101).
_GFX_ALIASES = {"gfx9010": "gfx90a", "gfx90010": "gfx90a", "gfx9402": "gfx942", "gfx90402": "gfx942",
                "gfx9500": "gfx950", "gfx90500": "gfx950", "gfx9008": "gfx908", "gfx9006": "gfx906",
                "gfx11001": "gfx1101", "gfx11000": "gfx1100"}


def _gfx(raw: object, name: str) -> str | None:
    if isinstance(raw, str) and raw.strip():
        raw = raw.strip().lower()[:32]
        return _GFX_ALIASES.get(raw, raw)
    for pattern, gfx in _GFX_BY_NAME:
        if re.search(pattern, name, re.IGNORECASE):
            return gfx
    return None


def _text_of(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _amd_name(card: dict[str, object]) -> str:
    lower = {k.lower(): _text_of(v) for k, v in card.items()}
    for key in ("card series", "device name", "card sku", "card model", "device id"):
        v = _value(lower.get(key))
        if v and not re.match(r"^0x[0-9a-f]+$", v, re.IGNORECASE):  # ROCm 4.3 put the vendor id here
            return v
    return _value(lower.get("device id")) or "unknown AMD GPU"


def _amd_vram_mib(card: dict[str, object], *, used: bool = False) -> int | None:
    prefix = "vram total used memory" if used else "vram total memory"
    for key, value in card.items():
        k = key.lower()
        if k.startswith(prefix):
            v = _value(_text_of(value))
            if v is None or not v.isdigit() or len(v) > 20:
                return None
            mib = int(v) if "(mib)" in k else int(v) // (1 << 20)  # Hygon DCUs report MiB
            return mib if mib <= MAX_GPU_MIB else None
    return None


def parse_rocm_smi_json(path: Path) -> Inventory:
    doc = _load_json(path, ROCM_HINT)
    if "gpu_data" in doc:
        return parse_amd_smi_json(path, doc)
    cards = sorted(((k, v) for k, v in doc.items() if re.fullmatch(r"card[0-9]{1,4}", k) and isinstance(v, dict)),
                   key=lambda kv: int(kv[0][4:]))
    if not cards:
        raise _invalid(path, "no card entries (objects named card0, card1, ...)", ROCM_HINT)
    gpus = []
    if len(cards) > MAX_GPUS:
        raise _invalid(path, f"{len(cards)} cards: more than any host has", ROCM_HINT)
    for key, card in cards:
        vram = _amd_vram_mib(card)
        if vram is None:
            raise _invalid(path, f"{key} has no VRAM total (a capture made with -a has none)", ROCM_HINT)
        name = _amd_name(card)
        lower = {k.lower(): _text_of(v) for k, v in card.items()}
        used = _amd_vram_mib(card, used=True)
        gpus.append(Gpu(index=_index(key[4:], 0), vendor="amd", name=name[:200], memory_total_mib=vram,
                        memory_free_mib=vram - used if used is not None else None,
                        gfx=_gfx(_value(lower.get("gfx version")), name)))
    return Inventory(f"rocm-smi-json:{path.name}", tuple(gpus), notes=check_gpus(path, gpus))


def parse_amd_smi_json(path: Path, doc: dict[str, Any] | None = None) -> Inventory:
    doc = doc if doc is not None else _load_json(path, "capture with: amd-smi static --json")
    data = doc.get("gpu_data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise _invalid(path, "no gpu_data list", "capture with: amd-smi static --json")
    gpus = []
    hint = "capture with: amd-smi static --json"
    if len(data) > MAX_GPUS:
        raise _invalid(path, f"{len(data)} GPUs: more than any host has", hint)
    for n, g in enumerate(data):
        if not isinstance(g, dict):
            raise _invalid(path, f"gpu_data[{n}] is a {type(g).__name__}, not an object", hint)
        asic, vram = _obj(g.get("asic")), _obj(g.get("vram"))
        size = _obj(vram.get("size"))
        value, unit = size.get("value"), str(size.get("unit", "")).upper()[:8]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_GPU_MIB:
            raise _invalid(path, f"GPU {n} has no plausible vram.size", hint)
        # amd-smi writes "MB" for mebibytes (an MI210's 64 GiB shows as 65520 MB).
        mib = value * 1024 if unit == "GB" else value
        if mib > MAX_GPU_MIB:
            raise _invalid(path, f"GPU {n} reports {mib} MiB: not a real GPU", hint)
        name = str(asic.get("market_name") or "unknown AMD GPU")[:200]
        idx = g.get("gpu", n)
        gpus.append(Gpu(index=idx if isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < MAX_GPUS
                        else n, vendor="amd", name=name, memory_total_mib=mib,
                        gfx=_gfx(asic.get("target_graphics_version"), name)))
    return Inventory(f"amd-smi-json:{path.name}", tuple(gpus), notes=check_gpus(path, gpus))


def _obj(value: object) -> dict[str, Any]:
    """A JSON object, or an empty one for anything else (a capture of unknown shape is read defensively)."""
    return value if isinstance(value, dict) else {}


def _load_json(path: Path, hint: str) -> dict[str, Any]:
    try:
        doc = parse_json(_read(path), where=path.name, what="capture", code="hw.capture_invalid")
    except UsageError as exc:
        raise _invalid(path, exc.message.split(": ", 1)[-1] if ": " in exc.message else exc.message, hint) from None
    if not isinstance(doc, dict):
        raise _invalid(path, "top level is not an object", hint)
    return doc
