"""`--help` of every command names values, never Python types (`--trust <list[Path]>`, `BUNDLE <path>`), and
Typer's shell completion works: the script is produced and completes commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from gptossctl.cli.main import app

GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
# What Typer 0.29 printed: <list[Path]>, <path>, <str>, <int range>, <float range>, <bool>, {bundle}
PYTHON_TYPE = re.compile(r"<(list\[|path|Path|str|int|float|bool|text|file|dir|datetime)[^>]*>|\{[a-z_]+\}")


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


ALL = list(_commands(typer.main.get_command(app)))


def test_the_command_tree_is_walked_whole() -> None:
    assert len(ALL) >= 50 and ("bundle", "join") in ALL and ("compliance", "check") in ALL


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "gptossctl")
def test_help_shows_no_python_type(path: tuple[str, ...]) -> None:
    res = CliRunner().invoke(app, [*path, "--help"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Usage: gptossctl" in res.output
    found = PYTHON_TYPE.findall(res.output)
    assert not PYTHON_TYPE.search(res.output), f"{' '.join(path)} --help shows types {found}:\n{res.output}"


def test_help_through_the_console_script_names_values() -> None:
    out = subprocess.run([str(GPTOSSCTL), "bundle", "join", "--help"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL).stdout
    assert "Usage: gptossctl bundle join [OPTIONS] PLACES..." in out
    assert re.search(r"--trust TRUST\s", out) and re.search(r"--out OUT\s", out) and not PYTHON_TYPE.search(out), out


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("_GPTOSSCTL_COMPLETE")}


def test_show_completion_prints_a_bash_script_that_completes_commands(tmp_path: Path) -> None:
    # Typer detects the shell from the parent process: run it from bash, as a user would.
    script = subprocess.run(["bash", "-c", f"'{GPTOSSCTL}' --show-completion; exit $?"], capture_output=True,
                            text=True, timeout=60, env=_env(), stdin=subprocess.DEVNULL)
    assert script.returncode == 0, script.stderr
    assert "_GPTOSSCTL_COMPLETE" in script.stdout and "complete " in script.stdout, script.stdout
    # The script, sourced into bash, asks gptossctl for the words that complete `gptossctl bun` and `bundle v`.
    (tmp_path / "completion.bash").write_text(script.stdout)
    probe = (f"PATH='{GPTOSSCTL.parent}':$PATH; source '{tmp_path / 'completion.bash'}'; "
             "f=$(complete -p gptossctl | sed -E 's/.*-F ([^ ]+).*/\\1/'); "
             "COMP_WORDS=(gptossctl bun); COMP_CWORD=1; COMP_LINE='gptossctl bun'; COMP_POINT=13; "
             "$f gptossctl bun gptossctl; "
             "echo \"1:${COMPREPLY[*]}\"; "
             "COMP_WORDS=(gptossctl bundle v); COMP_CWORD=2; COMP_LINE='gptossctl bundle v'; COMP_POINT=18; "
             "$f gptossctl v bundle; "
             "echo \"2:${COMPREPLY[*]}\"")
    res = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, env=_env(),
                         stdin=subprocess.DEVNULL)
    assert "1:bundle" in res.stdout and re.search(r"^2:.*\bverify\b", res.stdout, re.M), res.stdout + res.stderr


def test_the_split_hint_names_only_options_that_exist() -> None:
    """A piece larger than a part: the hint said 'or pack the bundle with a smaller shard size', which no
    option of pack sets. Every option it names must be one of `bundle split`, and its size must work."""
    import hashlib

    from gptossctl.bundle.parts import plan_parts
    from gptossctl.bundle.pieces import PieceRef
    from gptossctl.errors import UsageError

    pieces = [PieceRef("w/big", 0, 0, 5000, hashlib.sha256(b"b").hexdigest())]
    with pytest.raises(UsageError) as exc:
        plan_parts(pieces, 4000, 100)
    hint = exc.value.hint or ""
    pack_help = CliRunner().invoke(app, ["bundle", "pack", "--help"]).output
    split_help = CliRunner().invoke(app, ["bundle", "split", "--help"]).output
    assert "shard" not in pack_help.lower() and "pack" not in hint, hint  # no setting of pack to point at
    for option in re.findall(r"--[a-z][a-z-]+", hint):
        assert option in split_help, f"{option} in {hint!r}"
    size = int(re.search(r"--part-size (\d+)", hint).group(1))  # type: ignore[union-attr]
    assert plan_parts(pieces, size, 100)


def test_install_completion_writes_the_script_and_sources_it_from_bashrc(tmp_path: Path) -> None:
    env = {**_env(), "HOME": str(tmp_path)}
    res = subprocess.run(["bash", "-c", f"'{GPTOSSCTL}' --install-completion; exit $?"], capture_output=True,
                         text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    scripts = list(tmp_path.rglob("gptossctl*"))
    assert scripts and "_GPTOSSCTL_COMPLETE" in scripts[0].read_text(), scripts
    assert str(scripts[0].relative_to(tmp_path)) in (tmp_path / ".bashrc").read_text()
