"""Every value put into a unit goes through one check: no line break or control character reaches a unit."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptossctl.errors import UsageError
from gptossctl.install.render import UnitInputs, render_unit
from gptossctl.resources import data_dir
from gptossctl.templates import check_unit_value, fill_template

BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\x00", "\x1b"]


@pytest.mark.parametrize("brk", BREAKS, ids=[repr(b) for b in BREAKS])
def test_fill_template_refuses_a_control_character_in_any_value(brk: str) -> None:
    with pytest.raises(UsageError) as exc:
        fill_template("[Service]\nExecStart={{ python }} -m x\n", {"python": f"/usr/bin/python3{brk}User=root"})
    assert exc.value.code == "service.unsafe_unit_value"


@pytest.mark.parametrize("field", ["env_file", "config_file", "release_dir"])
def test_render_unit_refuses_a_newline_in_a_release_path(field: str) -> None:
    good = Path("/opt/gptoss/x/releases/5")
    inp = {"python": Path("/usr/bin/python3"), "env_file": good / "service.env", "config_file": good / "vllm.yaml",
           "release_dir": good, "vendor": "cpu"}
    inp[field] = Path(f"/opt/gptoss/x/releases/5\nUser=root/{field}")
    with pytest.raises(UsageError) as exc:
        render_unit((data_dir("systemd") / "gptoss@.service").read_text(), UnitInputs(**inp))  # type: ignore[arg-type]
    assert exc.value.code == "service.unsafe_unit_value"


def test_device_lines_are_checked_one_by_one() -> None:
    out = fill_template("{{ d }}\n", {"d": "DeviceAllow=/dev/a rw\nDeviceAllow=/dev/b rw"}, lines=("d",))
    assert out.count("DeviceAllow=") == 2
    with pytest.raises(UsageError):
        fill_template("{{ d }}\n", {"d": "DeviceAllow=/dev/a rw\rUser=root"}, lines=("d",))


def test_ordinary_values_pass() -> None:
    assert check_unit_value(Path("/opt/gptoss/café/releases/5"), "the release") == "/opt/gptoss/café/releases/5"
