"""The host checks' own judgements (install/checklist.py): wheel tags against the target's interpreter and
machine, the interpreter read without running it, and a port something listens on (a real socket)."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from gptossctl.errors import CheckFailed, EnvironmentNotReady
from gptossctl.install.checklist import (
    Preflight,
    _interpreter,
    _ports,
    interpreter_facts,
    resolve_in_root,
    wheel_misfit,
)
from gptossctl.install.layout import Layout
from gptossctl.install.release import ReleaseRecord, ReplicaRecord

MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())


@pytest.mark.parametrize(("wheel", "fits"), [
    ("vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl", True),  # the stable ABI: 3.8 and later
    ("torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64.whl", True),
    ("six-1.17.0-py2.py3-none-any.whl", True),
    ("torch-2.9.0-cp311-cp311-manylinux_2_28_x86_64.whl", False),  # another Python's ABI
    ("torch-2.9.0-cp313-abi3-manylinux_2_28_x86_64.whl", False),  # abi3 from a later Python
    ("torch-2.9.0-cp312-cp312-manylinux_2_28_aarch64.whl", False),  # another machine
    ("not-a-wheel.whl", True),  # tags that cannot be read are not judged here (uv judges the file)
])
def test_a_wheel_fits_the_target_by_its_tags(wheel: str, fits: bool) -> None:
    why = wheel_misfit(wheel, (3, 12), "x86_64")
    assert (why == "") is fits, why
    if not fits and "aarch64" in wheel:
        assert "not for x86_64" in why


def test_nothing_is_judged_that_cannot_be_told() -> None:
    assert wheel_misfit("torch-2.9.0-cp311-cp311-manylinux_2_28_aarch64.whl", None, None) == ""


def test_the_interpreter_is_read_not_run(tmp_path: Path) -> None:
    real = Path(os.path.realpath(sys.executable))
    assert interpreter_facts(real) == (tuple(sys.version_info[:2]), MACHINE)
    link = tmp_path / "python3"  # a name without the version: the link's target names it
    link.symlink_to(real)
    assert interpreter_facts(link)[0] == tuple(sys.version_info[:2])
    script = tmp_path / "python3.11"
    script.write_text("#!/bin/sh\n")  # not ELF: the machine is unknown, the name still says the version
    assert interpreter_facts(script) == ((3, 11), None)


def _elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")


def test_a_staged_interpreter_s_absolute_links_are_followed_inside_the_staged_root(tmp_path: Path) -> None:
    """RHEL's /usr/bin/python3 -> /etc/alternatives/python3 -> /usr/bin/python3.11: each absolute target is
    re-rooted under the staging root, never read on the build host."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "alternatives").mkdir(parents=True)
    other = 0xB7 if MACHINE != "aarch64" else 0x3E  # a machine that is not the build host's
    (root / "usr" / "bin" / "python3.11").write_bytes(_elf(other))
    (root / "etc" / "alternatives" / "python3").symlink_to("/usr/bin/python3.11")
    (root / "usr" / "bin" / "python3").symlink_to("/etc/alternatives/python3")
    assert interpreter_facts(Path("/usr/bin/python3"), root) == ((3, 11), "aarch64" if other == 0xB7 else "x86_64")
    assert resolve_in_root(root, Path("/usr/bin/python3")) == root / "usr" / "bin" / "python3.11"
    assert resolve_in_root(root, Path("/usr/../../usr/bin/python3")) == root / "usr" / "bin" / "python3.11"


def test_a_staged_interpreter_link_loop_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3").symlink_to("/usr/bin/python3")  # on the build host: the host's python
    with pytest.raises(OSError):
        resolve_in_root(root, Path("/usr/bin/python3"))
    assert interpreter_facts(Path("/usr/bin/python3"), root) == (None, None)
    layout = Layout(root, "checklist-test")
    p = Preflight(bundle=None, layout=layout, port=8000,  # type: ignore[arg-type]
                  python=Path("/usr/bin/python3"), vllm_python=None, previous=None)
    with pytest.raises(EnvironmentNotReady) as err:
        _interpreter(p)
    assert err.value.code == "install.no_python" and "loop" in err.value.message


def _plan(port: int, previous: ReleaseRecord | None = None) -> Preflight:
    p = Preflight(bundle=None, layout=Layout(Path("/"), "checklist-test"), port=port,  # type: ignore[arg-type]
                  python=Path("/usr/bin/python3"), vllm_python=None, previous=previous)
    p.replicas = (ReplicaRecord(0, port + 1),)
    return p


def _record(port: int) -> Any:
    return ReleaseRecord(version=1, bundle="b", instance="checklist-test", profile="p", served_name="s",
                         manifest_sha256="0" * 64, python="/usr/bin/python3", port=port - 1,
                         replicas=(ReplicaRecord(0, port),))


def test_a_port_something_listens_on_is_refused_unless_the_instance_holds_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(CheckFailed) as exc:
            _ports(_plan(taken - 1))  # the router on taken-1, r0 on taken
        assert exc.value.code == "install.port_in_use" and [f.subject for f in exc.value.findings] == [str(taken)]
        assert "address already in use" in exc.value.message and "replica r0" in exc.value.message
        # The instance's own running release holds it: it is replaced, not in the way.
        assert "free" in _ports(_plan(taken - 1, previous=_record(taken)))
