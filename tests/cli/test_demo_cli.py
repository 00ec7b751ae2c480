"""The README's demo command, end to end through the real CLI: every step must behave."""

from __future__ import annotations

import re
from pathlib import Path


def test_demo_passes_every_step(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("demo", "--out", str(tmp_path / "demo"))
    steps = {s["step"]: s for s in doc["data"]["steps"]}
    assert code == 0 and doc["data"]["ok"] is True, [s for s in steps.values() if not s["ok"]]
    for name in ("bundle pack", "bundle verify (2 of 2)", "tampered bundle refused", "hw check",
                 "install (staged)", "unit graded", "compliance check", "drift caught"):
        assert steps[name]["ok"], steps[name]
    exposure = re.search(r"exposure (\d+\.\d+)", steps["unit graded"]["detail"])
    assert exposure and float(exposure.group(1)) <= 2.0, steps["unit graded"]
    assert (tmp_path / "demo/root/etc/systemd/system/multi-user.target.wants/gptoss@tiny-gpt-oss.service").is_symlink()
    assert ", 0 failed, " in steps["compliance check"]["detail"]
    assert "drift.payload failed" in steps["drift caught"]["detail"]
