"""The rendered-unit invariant (install/units.py): a unit is exactly a rendering of gptossctl's own template,
no directive added or changed, no Exec*= prefix; and install's check of profile keys against the release's own
vLLM parser (install/environment.py check_flags), with a stand-in interpreter that prints a parser's options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gptossctl.errors import CheckFailed
from gptossctl.install.environment import check_flags
from gptossctl.install.release import EdgeRecord
from gptossctl.install.render import UnitInputs, render_unit, unit_template
from gptossctl.install.router import render_router_unit, router_template, router_unit_problems
from gptossctl.install.units import VLLM_FILLED, directive_problems

PY = Path(sys.executable)
INPUTS = UnitInputs(PY, Path("/x/service.env"), Path("/x/vllm.yaml"), Path("/x"), "nvidia", (0, 1), 2, mig=True)


def _vllm() -> str:
    return render_unit(unit_template(), INPUTS)


def _router() -> str:
    return render_router_unit(router_template(), nginx=Path("/usr/sbin/nginx"), config=Path("/etc/n.conf"),
                              key_source=Path("/etc/k"))


def test_renderings_of_the_own_templates_keep_the_invariant() -> None:
    for shape in ("nvidia", "amd", "cpu"):
        gpus = () if shape == "cpu" else (0,)
        unit = render_unit(unit_template(), UnitInputs(PY, Path("/e"), Path("/c"), Path("/r"), shape, gpus))
        assert directive_problems(unit, unit_template(), "gptoss@.service", filled=VLLM_FILLED) == []
    assert directive_problems(_router(), router_template(), "gptoss-router@.service") == []


@pytest.mark.parametrize("change", [
    ("[Service]\n", "[Service]\nExecStartPre=+/bin/true\n"),
    ("[Service]\n", "[Service]\nExecStartPre=/bin/true\n"),
    ("ExecStart=/", "ExecStart=!/"),
    ("ExecStart=/", "ExecStart=-/"),
    ("ExecStart=/", "ExecStart=@/"),
    ("User=gptoss\n", "User=root\n"),
    ("Group=gptoss\n", ""),
    ("[Service]\n", "[Service]\nPermissionsStartOnly=yes\n"),
    ("[Service]\n", "[Service]\nRootDirectory=/srv/evil\n"),
    ("NoNewPrivileges=yes\n", "NoNewPrivileges=no\n"),
    ("[Service]\n", "[Service]\nExecStart=/bin/sh\n"),
], ids=lambda c: c[1].strip().replace("\n", " ")[:40] or "removed")
def test_a_changed_vllm_unit_breaks_the_invariant(change: tuple[str, str]) -> None:
    unit = _vllm()
    assert change[0] in unit
    bad = directive_problems(unit.replace(change[0], change[1], 1), unit_template(), "gptoss@.service",
                             filled=VLLM_FILLED)
    assert bad, change


@pytest.mark.parametrize("change", [("DynamicUser=yes\n", "DynamicUser=no\n"),
                                    ("[Service]\n", "[Service]\nUser=root\n"),
                                    ("ExecReload=/bin/kill", "ExecReload=+/bin/kill"),
                                    ("CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_SETUID\n"),
                                    ("IPAddressDeny=any\n", "IPAddressDeny=any\nReadWritePaths=/etc\n")])
def test_a_changed_router_unit_breaks_the_invariant(change: tuple[str, str]) -> None:
    unit = _router()
    assert change[0] in unit and router_unit_problems(unit, router_template()) == []
    assert router_unit_problems(unit.replace(change[0], change[1], 1), router_template())


EDGE = EdgeRecord("10.0.0.5", 443, "0" * 64, "1" * 64)


@pytest.mark.parametrize("change", [("CAP_SETUID CAP_SETGID CAP_NET_BIND_SERVICE", "CAP_SETUID CAP_SETGID CAP_SYS_ADMIN"),
                                    ("DynamicUser=no", "DynamicUser=yes"),
                                    ("SystemCallFilter=@setuid", "SystemCallFilter=@mount"),
                                    ("PrivateMounts=yes\n", ""),
                                    ("ReadWritePaths=/var/log/gptoss/edge ", "ReadWritePaths=/etc "),
                                    # the audit log's directory: the edge's master writes its access log only
                                    ("ReadWritePaths=/var/log/gptoss/edge ", "ReadWritePaths=/var/log/gptoss ")])
def test_the_edge_router_unit_is_pinned_to_what_its_master_needs(change: tuple[str, str]) -> None:
    unit = render_router_unit(router_template(), nginx=Path("/usr/sbin/nginx"), config=Path("/etc/n.conf"),
                              key_source=Path("/etc/k"), edge=EDGE)
    assert change[0] in unit and router_unit_problems(unit, router_template()) == []
    assert router_unit_problems(unit.replace(change[0], change[1], 1), router_template())


def _fake_python(tmp_path: Path, options: list[str]) -> Path:
    """An interpreter stand-in that answers the flags program with a parser's option strings."""
    p = tmp_path / "python"
    p.write_text("#!/bin/sh\necho '" + json.dumps({"version": "0.33.0", "options": options}) + "'\n")
    p.chmod(0o755)
    return p


def test_install_refuses_a_key_that_only_abbreviates_one_of_the_releases_options(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, ["--model", "--port", "--max-model-len", "--max-model-len-x", "-h"])
    assert check_flags(python, ["model", "port", "max-model-len"]) == 3
    with pytest.raises(CheckFailed) as exc:
        check_flags(python, ["model", "max-model"])
    assert exc.value.code == "install.vllm_flag_unknown"
    assert [f.subject for f in exc.value.findings] == ["max-model"]
    assert "--max-model-len" in exc.value.findings[0].message


def test_install_reports_a_vllm_that_cannot_list_its_options(tmp_path: Path) -> None:
    p = tmp_path / "python"
    p.write_text("#!/bin/sh\necho 'No module named vllm' >&2\nexit 1\n")
    p.chmod(0o755)
    with pytest.raises(CheckFailed) as exc:
        check_flags(p, ["model"])
    assert exc.value.code == "install.env_broken" and "vllm" in (exc.value.hint or "")
