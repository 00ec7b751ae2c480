"""The demo's quick path (`--staged`) end to end through the real CLI: every step must behave. (The full path,
serving the tiny harmony gpt-oss from a booted container, is tests/integration/test_demo_full.py.)"""

from __future__ import annotations

import re
from pathlib import Path


def test_staged_demo_passes_every_step(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("demo", "--staged", "--out", str(tmp_path / "demo"))
    steps = {s["step"]: s for s in doc["data"]["steps"]}
    assert code == 0 and doc["data"]["ok"] is True, [s for s in steps.values() if s["status"] != "ok"]
    for name in ("bundle pack", "bundle verify (2 of 2)", "tampered bundle refused", "hw check",
                 "install (staged)", "unit graded", "compliance check", "drift caught"):
        assert steps[name]["status"] == "ok", steps[name]
    exposure = re.search(r"exposure (\d+\.\d+)", steps["unit graded"]["detail"])
    assert exposure and float(exposure.group(1)) <= 2.0, steps["unit graded"]
    assert (tmp_path / "demo/root/etc/systemd/system/multi-user.target.wants/gptoss@tiny-gpt-oss-r0.service").is_symlink()
    assert ", 0 failed, " in steps["compliance check"]["detail"]
    assert "drift.payload failed" in steps["drift caught"]["detail"]


def test_a_rerun_replaces_only_the_demos_own_directory(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "demo"
    assert cli("demo", "--staged", "--out", str(out))[0] == 0
    code, doc = cli("demo", "--staged", "--out", str(out))  # its own: replaced
    assert code == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    code, doc = cli("demo", "--staged", "--out", str(mine))
    assert code == 2 and doc["error"]["code"] == "demo.foreign_out" and (mine / "notes.txt").read_text() == "keep\n"


def test_a_staged_demo_writes_only_the_entries_it_may_replace(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptossctl.demo.run import DEMO_ENTRIES

    out = tmp_path / "demo"
    assert cli("demo", "--staged", "--out", str(out))[0] == 0
    assert {p.name for p in out.iterdir()} <= DEMO_ENTRIES  # else a rerun would refuse its own directory
