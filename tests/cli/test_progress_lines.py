"""Long work seen from a log: without a terminal, pack, verify and copy write a progress line on stderr at
least every GPTOSSCTL_PROGRESS_INTERVAL seconds (10 by default) with bytes done, rate and time left;
`--quiet` writes none. Through the installed console script, stdout and stderr piped, stdin not a terminal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptossctl.cli.output import ProgressLog, progress_interval, state
from gptossctl.resources import data_dir
from tests.conftest import PASSPHRASE, KeyPair

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
# "packing: 12.0 MiB of 129.1 MiB (9%), 118.0 MiB/s, 1s elapsed, ETA 1s"
LINE = re.compile(r"^(packing|verifying|copying): \d+(\.\d)? (B|KiB|MiB|GiB)( of \d+(\.\d)? (B|KiB|MiB|GiB) \(\d+%\))?, "
                  r"\d+(\.\d)? (B|KiB|MiB|GiB)/s, \d+[smh]\S* elapsed(, ETA \S+)?$")


def piped(*args: str, interval: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env["GPTOSSCTL_KEY_PASSPHRASE"] = PASSPHRASE.decode()
    if interval is not None:
        env["GPTOSSCTL_PROGRESS_INTERVAL"] = interval
    return subprocess.run([str(GPTOSSCTL), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600, env=env)


def progress_lines(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if re.match(r"^(packing|verifying|copying):", ln)]
    assert all(LINE.match(ln) for ln in lines), lines
    return lines


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny model with 128 MiB more weights: long enough to take several 20 ms intervals to pack."""
    model = tmp_path_factory.mktemp("big") / "tiny-gpt-oss"
    shutil.copytree(tiny_model, model)
    with (model / "model-extra-padding.safetensors").open("wb") as f:
        for _ in range(128):
            f.write(os.urandom(1 << 20))
    return model


def _pack(model: Path, out: Path, key: KeyPair, *pre: str, interval: str | None) -> subprocess.CompletedProcess[str]:
    return piped(*pre, "bundle", "pack", str(data_dir("bundles") / "tiny-demo.yaml"), "--model-dir", str(model),
                 "--out", str(out), "--key", str(key.private), "--version", "7", interval=interval)


def test_pack_and_verify_without_a_terminal_print_progress_lines(big_model: Path, keys: dict[str, KeyPair],
                                                                 tmp_path: Path) -> None:
    r = _pack(big_model, tmp_path / "b", keys["alice"], interval="0.02")
    assert r.returncode == 0, r.stderr
    lines = progress_lines(r.stderr)
    assert len(lines) >= 2, r.stderr
    assert any(" of " in ln and "ETA" in ln for ln in lines), lines  # the total is known once files are listed
    assert not progress_lines(r.stdout)  # progress never on stdout: that is the result's
    r = piped("bundle", "verify", str(tmp_path / "b"), "--trust", str(keys["alice"].public), interval="0.01")
    assert r.returncode == 0, r.stderr
    assert len(progress_lines(r.stderr)) >= 2, r.stderr


def test_quiet_prints_no_progress(big_model: Path, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    r = _pack(big_model, tmp_path / "b", keys["alice"], "--quiet", interval="0.02")
    assert r.returncode == 0, r.stderr
    assert progress_lines(r.stderr) == []
    r = piped("--quiet", "bundle", "verify", str(tmp_path / "b"), "--trust", str(keys["alice"].public),
              interval="0.01")
    assert r.returncode == 0 and progress_lines(r.stderr) == [], r.stderr


def test_a_slow_copy_prints_a_line_at_least_every_interval(packed: Path, tmp_path: Path) -> None:
    """--limit-rate makes the copy last a known time: about 1.1 MiB at 512 KiB/s, over two seconds."""
    r = piped("bundle", "copy", str(packed), str(tmp_path / "copy"), "--limit-rate", "512K", interval="0.25")
    assert r.returncode == 0, r.stderr
    lines = progress_lines(r.stderr)
    assert len(lines) >= 6, r.stderr  # >= 2 s / 0.25 s, less a margin for start and end
    assert "ETA" in lines[-1]


def test_the_interval_is_ten_seconds_by_default_and_set_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "progress_interval", None)
    monkeypatch.delenv("GPTOSSCTL_PROGRESS_INTERVAL", raising=False)
    assert progress_interval() == 10.0
    monkeypatch.setenv("GPTOSSCTL_PROGRESS_INTERVAL", "2.5")
    assert progress_interval() == 2.5


def test_a_stalled_copy_still_reports_zero_bytes_a_second() -> None:
    lines: list[str] = []
    with ProgressLog("copying", 0.01, write=lines.append) as log:
        log.set_total(1 << 30)
        log.advance(1 << 20)
        while len(lines) < 3:
            time.sleep(0.005)
    assert lines[0].startswith("copying: 1.0 MiB of 1.0 GiB (0%), ") and "ETA" in lines[0]
    assert ", 0 B/s, " in lines[-1], lines


def test_once_every_byte_is_done_one_line_says_so_and_then_none() -> None:
    """An install goes on for minutes after verifying (environment, health): '100%, 0 B/s' every 10 s is noise."""
    lines: list[str] = []
    with ProgressLog("verifying", 0.01, write=lines.append) as log:
        log.set_total(1 << 20)
        log.advance(1 << 20)
        time.sleep(0.3)
    assert len([ln for ln in lines if "(100%)" in ln]) == 1, lines
