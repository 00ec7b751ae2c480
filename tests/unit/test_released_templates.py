"""Every text a unit template ever had on this repository's history is in units.RELEASED (but today's): a bundle
packed by an earlier gptossctl still installs once gptossctl is upgraded (rendered from today's template)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from gptossctl.install.units import RELEASED

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def test_every_earlier_text_of_each_template_is_released_and_todays_is_not_listed() -> None:
    assert _git("rev-parse", "--is-inside-work-tree").strip() == "true", "the history of systemd/ is the reference"
    missing = []
    for template in sorted((REPO / "systemd").iterdir()):
        today = hashlib.sha256(template.read_bytes()).hexdigest()
        assert today not in RELEASED.get(template.name, ()), template.name
        for commit in _git("rev-list", "--full-history", "HEAD", "--", f"systemd/{template.name}").split():
            shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:systemd/{template.name}"],
                                   capture_output=True)
            if shown.returncode != 0:  # the commit that removed or renamed it
                continue
            digest = hashlib.sha256(shown.stdout).hexdigest()
            if digest != today and digest not in RELEASED.get(template.name, ()):
                missing.append(f"{template.name} at {commit[:12]}: {digest}")
    assert not missing, "add to gptossctl/install/units.py RELEASED:\n" + "\n".join(missing)
