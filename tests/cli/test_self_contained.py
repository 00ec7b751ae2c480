"""A clone of the project with nothing beside it collects the whole suite and runs the tests that read
real captures: every fixture lives in the repository (tests/data), none in a folder next to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_lone_clone_collects_every_test_and_runs_the_capture_tests(tmp_path: Path) -> None:
    clone = tmp_path / "alone" / "gptossctl"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    assert not (clone.parent / "shared").exists() and sorted(p.name for p in clone.parent.iterdir()) == ["gptossctl"]
    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    collected = subprocess.run([*pytest_cmd, "--collect-only", "--ignore=tests/gpu"], cwd=clone,
                               capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert " tests collected" in collected.stdout and "error" not in collected.stdout.splitlines()[-1]
    ran = subprocess.run([*pytest_cmd, "tests/hardware/test_captures.py", "tests/hardware/test_layout_profiles.py"],
                         cwd=clone, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " passed" in ran.stdout.splitlines()[-1] and "failed" not in ran.stdout.splitlines()[-1]
