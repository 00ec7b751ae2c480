"""`--help` in words a sysadmin reads, not Python types.

Typer 0.29 writes each value's Python type into the help (`--trust <list[Path]>`, `BUNDLE <path>`,
`--workers <int range>`) and wraps required arguments in braces (`{bundle}`). Help here names the value
instead, as man pages do: `--trust TRUST`, `--out OUT`, `BUNDLE`, `PLACES...`; a range or a default still
shows in brackets after the text. Applied once, to the whole command tree, by the root group.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import typer.core


def _value_name(param: typer.core.TyperOption | typer.core.TyperArgument) -> str:
    choices = param.type_descriptor.choices
    if choices is not None:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in choices) + "]"
    return param.metavar or (param.name or "value").upper()


def _plain_option(param: typer.core.TyperOption) -> None:
    name = _value_name(param)
    param.display_type_rich = MethodType(lambda _self, ctx: name, param)  # type: ignore[method-assign]


def _plain_argument(param: typer.core.TyperArgument) -> None:
    shown = _value_name(param) + ("..." if param.nargs != 1 else "")
    param.metavar = shown
    param.display_type_rich = MethodType(lambda _self, ctx: None, param)  # type: ignore[method-assign]

    def usage(_self: Any) -> str:
        return shown if param.required else f"[{shown}]"

    param._usage_display_name = MethodType(usage, param)  # type: ignore[method-assign]


def plain_help(command: Any) -> None:
    """Give every option and argument under `command` (a command or group of Typer's own click) a value name
    in place of its Python type."""
    for param in command.params:
        if isinstance(param, typer.core.TyperOption):
            _plain_option(param)
        elif isinstance(param, typer.core.TyperArgument):
            _plain_argument(param)
    if isinstance(command, typer.core.TyperGroup):
        for sub in command.commands.values():
            plain_help(sub)


class PlainHelpGroup(typer.core.TyperGroup):
    """The root group: once Typer has built the whole tree under it, every help text is made plain."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_help(self)
