"""Units are rendered from gptossctl's own templates only, never from a bundle's.

A bundle carries the unit templates it was packed with (payload/systemd/*, signed), but a signature says who
packed it, not that what it says is safe: a signed template could add `ExecStartPre=+/bin/sh ...` (run as
root). So install refuses a bundle whose templates are not byte for byte gptossctl's own (`check_shipped`),
renders from gptossctl's package data (`own_template`), and checks the rendering against an invariant
(`directive_problems`): the rendered unit has exactly the template's directives, with the template's values
wherever the template fixes one, no Exec*= line beyond the template's, and no Exec*= prefix at all (`+`, `!`,
`!!` run with privileges; `@`, `:` and `-` change what runs or hide a failure; none of our templates uses
one). Compliance applies the same invariant to the installed units, and renders from gptossctl's own template.

Older bundles: exact match is enough while gptossctl's template text is unchanged (it is the same as in every
release so far); when it changes, bundles packed with the older text are refused with the hint to repack.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from gptossctl.errors import CheckFailed, Finding
from gptossctl.fsutil import read_bytes
from gptossctl.resources import data_dir

if TYPE_CHECKING:
    from gptossctl.bundle.manifest import Manifest

VLLM_TEMPLATE = "gptoss@.service"
# Keys the vLLM template's whole-line placeholders ({{ device_allow }}, {{ ip_allow }}, {{ private_ipc }}) add.
VLLM_FILLED = frozenset({"DeviceAllow", "IPAddressAllow", "PrivateIPC"})


def own_template(name: str) -> str:
    """gptossctl's own unit template `name` (package data), the only source a unit is rendered from."""
    return (data_dir("systemd") / name).read_text()


def _first_difference(own: str, shipped: str) -> str:
    lines = [ln for ln in difflib.unified_diff(own.splitlines(), shipped.splitlines(), "gptossctl's", "bundle's",
                                               n=0, lineterm="") if not ln.startswith(("---", "+++", "@@"))]
    return "; ".join(lines[:4])[:400] or "line endings or trailing bytes differ"


def check_shipped(root: Path, manifest: Manifest) -> int:
    """Refuse (exit 1, install.unit_template_differs) a bundle whose signed unit templates are not exactly
    gptossctl's own; return how many it ships."""
    findings = []
    shipped = [f for f in manifest.files if f.component == "units" or f.path.startswith("systemd/")]
    for f in shipped:
        name = Path(f.path).name
        own = data_dir("systemd") / name
        data = read_bytes(root / "payload" / f.path, what="unit template", code="install.bundle_changed",
                          limit=max(f.size + 1, 1 << 20))
        if not own.is_file():
            findings.append(Finding("install.unit_template_unknown", f"payload/{f.path}",
                                    "not a unit template this gptossctl ships"))
        elif data != own.read_bytes():
            text = data.decode("utf-8", "replace")
            findings.append(Finding("install.unit_template_differs", f"payload/{f.path}",
                                    f"differs from gptossctl's {name}: {_first_difference(own.read_text(), text)}"))
    if findings:
        raise CheckFailed(f"the bundle's unit templates differ from this gptossctl's ({', '.join(f.subject for f in findings)}): "
                          "units are rendered from gptossctl's own templates only", code="install.unit_template_differs",
                          findings=findings, hint="repack the bundle with this gptossctl (bundle pack copies its "
                          "own templates); never edit payload/systemd/ by hand")
    return len(shipped)


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every directive line of a unit, comments and blank lines skipped."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _eq, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def directive_problems(rendered: str, template: str, name: str, *, filled: Collection[str] = ()) -> list[str]:
    """What makes `rendered` not a rendering of `template`: a directive the template lacks, a fixed value
    changed or missing, more lines of a templated directive than the template has, an Exec*= prefix.
    `filled`: the keys the template's whole-line placeholders may add (in [Service])."""
    tmpl = [d for d in directives(template) if not (d[1].startswith("{{") and d[1].endswith("}}"))]
    fixed = Counter(d for d in tmpl if "{{" not in d[2])
    templated = Counter((s, k) for s, k, v in tmpl if "{{" in v)
    got = directives(rendered)
    bad = []
    for s, k, v in got:
        if k.startswith("Exec") and not v.startswith("/"):
            bad.append(f"{name}: {k}={v}: an Exec line must start with an absolute path (no +, !, !!, @, : or - "
                       "prefix)")
        if (s, k, v) in fixed or (s, k) in templated or (s == "Service" and k in filled):
            continue
        bad.append(f"{name}: [{s}] {k}={v} is not in gptossctl's template")
    have = Counter(got)
    bad += [f"{name}: [{s}] {k}={v} of gptossctl's template is missing" for (s, k, v), n in fixed.items()
            if have[(s, k, v)] < n]
    count = Counter((s, k) for s, k, _v in got)
    bad += [f"{name}: {count[(s, k)]} {k}= lines, gptossctl's template has {n}" for (s, k), n in templated.items()
            if count[(s, k)] > n]
    return bad


def check_directives(rendered: str, template: str, name: str, *, filled: Collection[str] = ()) -> str:
    """`rendered`, or CheckFailed (exit 1, service.unit_directives) when it breaks the template's invariant."""
    bad = directive_problems(rendered, template, name, filled=filled)
    if bad:
        raise CheckFailed(f"the rendered {name} is not a rendering of gptossctl's template: {bad[0]}",
                          code="service.unit_directives",
                          findings=[Finding("service.unit_directives", name, b) for b in bad],
                          hint="a value given to the installer added or changed a directive: report it; "
                               "nothing was installed")
    return rendered
