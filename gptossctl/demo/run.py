"""`gptossctl demo`: the product end to end on a tiny model, with no GPU and no model download.

The full path (default) serves the tiny harmony gpt-oss from a booted systemd container (demo/full.py); the
quick path (`--staged`) stops at a staged install (demo/staged.py). Both record every step (name, result,
seconds, what it showed) as they go, for a live display, and return one result with all of them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptossctl.demo.full import FullInputs, FullOutcome, check_inputs, run_full
from gptossctl.demo.staged import run_staged
from gptossctl.errors import Finding, GptossctlError, UsageError
from gptossctl.install.steps import StepCallback, StepRecord, Steps

MARKER = ".gptossctl-demo"  # in every directory the demo made: the only kind it will ever replace
MARKER_TEXT = "made by gptossctl demo: replaced by the next run\n"
# Every top-level entry a demo writes (staged: keys, model, bundle, root; full: work, bundles, container, ...).
DEMO_ENTRIES = frozenset({MARKER, "keys", "tiny-gpt-oss", "bundle", "bundle-tampered", "root", "work", "bundles",
                          "container", "journal.txt", "canary"})


@dataclass
class DemoResult:
    out: Path
    mode: str  # full | staged
    steps: list[StepRecord] = field(default_factory=list)
    outcome: FullOutcome = field(default_factory=FullOutcome)
    error: GptossctlError | None = None

    @property
    def ok(self) -> bool:
        return bool(self.steps) and self.error is None and all(s.status != "failed" for s in self.steps)

    @property
    def findings(self) -> list[Finding]:
        if self.error is None:
            return []
        failed = next((s.step for s in self.steps if s.status == "failed"), "demo")
        return [Finding("demo.step_failed", failed, self.error.message, hint=self.error.hint), *self.error.findings]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"out": str(self.out), "mode": self.mode, "ok": self.ok,
                             "steps": [s.to_dict() for s in self.steps]}
        if self.mode == "full":
            d.update(smoke=self.outcome.smoke, canary=self.outcome.canary, compliance=self.outcome.compliance,
                     usage=self.outcome.usage,
                     files=self.outcome.files)
        if self.error is not None:
            d["error"] = {"code": self.error.code, "message": self.error.message, "hint": self.error.hint}
        return d


def prepare_out(out: Path) -> None:
    """Start from an empty `out`: a directory an earlier demo made is replaced, anything else is refused."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} is " + ("a symbolic link" if out.is_symlink() else "not a directory"),
                         code="demo.bad_out",
                         hint="give a new directory (or one an earlier demo made) for the demo's files")
    if out.exists():
        foreign = foreign_entries(out)
        if foreign:
            raise UsageError(f"--out {out} holds what the demo did not make ({', '.join(foreign[:5])}); it "
                             "replaces only its own directories", code="demo.foreign_out",
                             hint="give a new directory, e.g. --out demo-out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text(MARKER_TEXT)


def foreign_entries(out: Path) -> list[str]:
    """What in `out` keeps the demo from replacing it: an empty folder is free; otherwise it must hold the
    marker, exactly as the demo writes it, and nothing at the top level but what a demo writes (a marker
    copied into someone's home directory must not make it deletable)."""
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return []
    marker = out / MARKER
    if marker.is_symlink() or not marker.is_file() or marker.stat().st_size != len(MARKER_TEXT) \
            or marker.read_bytes() != MARKER_TEXT.encode():
        return [f"{MARKER} missing or not the demo's"] + [e for e in entries if e != MARKER]
    return [e for e in entries if e not in DEMO_ENTRIES]


def run_demo(out: Path, *, staged: bool = False, inputs: FullInputs | None = None,
             on_step: StepCallback | None = None) -> DemoResult:
    """Every step runs the real code paths with real keys and real files; a failed step ends the demo, and
    the result says which and why (exit 1)."""
    if not staged:
        inputs = check_inputs(inputs)  # refused (exit 2/3) before anything is written
    prepare_out(out)
    result = DemoResult(out, "staged" if staged else "full")
    steps = Steps(on_step)
    result.steps = steps.records
    try:
        if staged or inputs is None:
            run_staged(out, steps)
        else:
            run_full(out, inputs, steps, result.outcome)
    except GptossctlError as exc:
        result.error = exc
    return result
