"""Units are rendered from gptossctl's own templates only, never from a bundle's.

A bundle carries the unit templates it was packed with (payload/systemd/*, signed), but a signature says who
packed it, not that what it says is safe: a signed template could add `ExecStartPre=+/bin/sh ...` (run as
root). So install refuses a bundle whose templates are not byte for byte gptossctl's own (`check_shipped`),
renders from gptossctl's package data (`own_template`), and checks the rendering against an invariant
(`directive_problems`): the rendered unit has exactly the template's directives, with the template's values
wherever the template fixes one, no Exec*= line beyond the template's, and no Exec*= prefix at all (`+`, `!`,
`!!` run with privileges; `@`, `:` and `-` change what runs or hide a failure; none of our templates uses
one). Compliance applies the same invariant to the installed units, and renders from gptossctl's own template.

Older bundles: a template text an earlier gptossctl shipped (its SHA-256 in `RELEASED`) is accepted too, so a
bundle packed before a template changed still installs and rolls back after gptossctl is upgraded; it grants
nothing either way, since units are rendered from this gptossctl's own text. Any other text is refused.
"""

from __future__ import annotations

import difflib
import hashlib
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
# Every earlier text of each template, as gptossctl shipped it (SHA-256 of the file): when a template changes, its
# previous digest is added here (tests/unit/test_released_templates.py holds this to the git history).
RELEASED: dict[str, frozenset[str]] = {
    "gptoss@.service": frozenset({
        "337062ddabc24a4293c3495b2166dee43f9a7487bb0bd8d31ca64ffbc65228f5",
        "4db34fb1e93d978b4c7193ed45f037f58dea579f05b6b7184d7c32cede1c1d06",
        "653b1c57567a06c40d9c53485025e5544708925b962d6f1ef1c5d0769ba84faa",
    }),
    "gptoss-router@.service": frozenset({
        "c1dee83256fc2f2c07c9e30821af6626926842abfcd6cd95bd987cdf5f233358",
        "e96a4c483f65951c2edd3f4cc24bd3eef7f4f6b1408d5aa80169912aac85e7f8",
    }),
    "gptoss-compliance@.service": frozenset({
        "cb47388d0ba0f7d41d5b8f63c741f9c964cd1d8084c249b143c6e7424d1e7373",
        "dd5745ced78c3094a92403ead37258b1cecd7386c19fe0f0a5df74e5a4e09f0d",
    }),
}
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
    gptossctl's own or a text an earlier gptossctl shipped; return how many it ships."""
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
        elif data != own.read_bytes() and hashlib.sha256(data).hexdigest() not in RELEASED.get(name, ()):
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
