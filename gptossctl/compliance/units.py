"""What systemd applies to each unit gptossctl installs: the file it loads and every drop-in it merges.

On a live host systemd is asked (`systemctl show -p DropInPaths,FragmentPath,NeedDaemonReload`); in a staged
tree (systemd 252 cannot `show` with --root) and as a second opinion live, the unit search path of
systemd.unit(5) is walked the way systemd walks it (src/shared/dropin.c): in every directory of the path, the
unit's own `UNIT.d/`, its template's `NAME@.TYPE.d/`, each dash prefix of its name (`gptoss-.service.d/` for
`gptoss-router@x.service`) and the type-wide `TYPE.d/`. The file systemd loads is the first `UNIT` on the path,
else (for an instance) the first template `NAME@.TYPE`: a same-named file earlier than ours shadows it.

The units: the vLLM unit or every replica unit and the router unit, the compliance service and timer, and
every scheduled canary's service and timer. gptossctl writes no drop-in except a canary schedule's two
(`schedule.conf`, `canary.conf`), which must be exactly what the schedule's record renders.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import GptossctlError
from gptossctl.install.layout import Layout
from gptossctl.install.release import ReleaseRecord
from gptossctl.install.serving import serving_set
from gptossctl.install.timer import COMPLIANCE_UNITS, compliance_unit_names
from gptossctl.probe.canary.schedule import UNITS as CANARY_UNITS
from gptossctl.probe.canary.schedule import (
    ScheduleLayout,
    load_record,
    render_service_dropin,
    render_timer_dropin,
)
from gptossctl.resources import data_dir
from gptossctl.templates import fill_template

# The system manager's unit search path, highest priority first (systemd.unit(5), "Unit File Load Path").
SEARCH_PATH: tuple[str, ...] = (
    "etc/systemd/system.control", "run/systemd/system.control", "run/systemd/transient",
    "run/systemd/generator.early", "etc/systemd/system", "etc/systemd/system.attached", "run/systemd/system",
    "run/systemd/system.attached", "run/systemd/generator", "usr/local/lib/systemd/system",
    "usr/lib/systemd/system", "lib/systemd/system", "run/systemd/generator.late")


@dataclass(frozen=True)
class Installed:
    """One unit gptossctl installs: its name, the file it wrote, what that file must hold (None: no rendering to
    compare with, `why` says so), the release's copy to compare too, and the drop-ins it wrote itself."""

    name: str
    path: Path
    expected: str | None
    why: str = ""
    copy: Path | None = None
    own_dropins: Mapping[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitView:
    """What systemd applies to one unit: the file it loads, every drop-in (paths under the layout's root)."""

    unit: Installed
    fragment: Path | None
    dropins: tuple[Path, ...]
    need_reload: bool = False
    asked: bool = False  # systemd itself was asked (live)


def dropin_dir_names(unit: str) -> list[str]:
    """The drop-in directories systemd consults for `unit`, most specific first: for gptoss-router@x.service,
    gptoss-router@x.service.d, gptoss-router@.service.d, gptoss-.service.d, service.d."""
    stem, _, kind = unit.rpartition(".")
    out: list[str] = []

    def walk(name: str) -> None:
        out.append(f"{name}.{kind}.d")
        prefix, at, instance = name.partition("@")
        if at and instance:
            walk(f"{prefix}@")
        dash = prefix.rstrip("-").rfind("-") if prefix.endswith("-") else prefix.rfind("-")
        if dash > 0:
            walk(prefix[:dash + 1])

    walk(stem)
    out.append(f"{kind}.d")
    return list(dict.fromkeys(out))


def applied_dropins(root: Path, unit: str) -> list[Path]:
    """Every `*.conf` drop-in systemd would merge into `unit`, from every directory of the search path under
    `root` (the same file reached twice, e.g. through a /lib -> usr/lib link, is named once)."""
    found: dict[str, Path] = {}
    for base in SEARCH_PATH:
        for d in dropin_dir_names(unit):
            for p in sorted((root / base / d).glob("*.conf")):
                found.setdefault(os.path.realpath(p) if not p.is_symlink() else str(p), p)
    return list(found.values())


def fragment(root: Path, unit: str) -> Path | None:
    """The unit file systemd loads for `unit`: the first of that name on the search path, else (an instance)
    the first of its template."""
    names = [unit]
    stem, _, kind = unit.rpartition(".")
    prefix, at, instance = stem.partition("@")
    if at and instance:
        names.append(f"{prefix}@.{kind}")
    for name in names:
        for base in SEARCH_PATH:
            p = root / base / name
            if p.exists() or p.is_symlink():
                return p
    return None


def installed_units(layout: Layout, rec: ReleaseRecord, release: Path,
                    rendered: Mapping[str, str] | None, render_error: str | None) -> list[Installed]:
    """Every unit gptossctl installed for this instance, with what each must hold."""
    why = render_error or "no approved rendering"
    out = [Installed(name, path, (rendered or {}).get(copy), why, release / copy)
           for name, path, copy in serving_set(layout, rec).unit_paths]
    python = {"python": sys.executable}  # the timer and canary units run the gptossctl that laid them down
    for template, name in zip(COMPLIANCE_UNITS, compliance_unit_names(layout), strict=True):
        out.append(Installed(name, layout.unit_dir / template,
                             fill_template((data_dir("systemd") / template).read_text(), python),
                             why=f"as rendered by this gptossctl ({sys.executable})"))
    return out + _canaries(layout.root, python)


def _canaries(root: Path, python: dict[str, str]) -> list[Installed]:
    """The service and timer of every canary schedule recorded under /etc/gptoss/canary."""
    sched = ScheduleLayout(root)
    out = []
    names = sorted(p.name[:-5] for p in sched.config_dir.glob("*.json") if not p.name.endswith(".baseline.json")) \
        if sched.config_dir.is_dir() else []
    for name in names:
        try:
            record = load_record(sched.record(name))
            own = {"timer": render_timer_dropin(record.runs), "service": render_service_dropin(record)[0]}
        except GptossctlError as exc:
            own, unreadable = {}, exc.message
        else:
            unreadable = ""
        for template in CANARY_UNITS:
            kind = template.rsplit(".", 1)[1]
            unit = f"gptoss-canary@{name}.{kind}"
            conf = "schedule.conf" if kind == "timer" else "canary.conf"
            text = fill_template((data_dir("systemd") / template).read_text(), python)
            out.append(Installed(unit, sched.unit_dir / template, None if unreadable else text,
                                 why=unreadable or f"as rendered by this gptossctl ({sys.executable})",
                                 own_dropins={sched.unit_dir / f"{unit}.d" / conf: own[kind]} if own else {}))
    return out


def view(layout: Layout, systemd: Systemd, unit: Installed) -> UnitView:
    """What systemd applies to `unit`: asked live, walked on disk always (a drop-in that systemd has not
    loaded yet is still found)."""
    root = layout.root
    dropins = applied_dropins(root, unit.name)
    found = fragment(root, unit.name)
    if not systemd.live:
        return UnitView(unit, found, tuple(dropins))
    props = systemd.show(unit.name, "DropInPaths", "FragmentPath", "NeedDaemonReload")
    told = [Path(p) for p in re.split(r"\s+", props.get("DropInPaths", "").strip()) if p]
    frag = props.get("FragmentPath") or None
    return UnitView(unit, Path(frag) if frag else found, tuple(dict.fromkeys([*told, *dropins])),
                    need_reload=props.get("NeedDaemonReload") == "yes", asked=bool(props))


# The manager's own configuration (systemd-system.conf(5)): the main file and its drop-ins, in every directory
# systemd reads them from. DefaultEnvironment= reaches every unit; ManagerEnvironment= the manager and what it
# spawns (generators).
MANAGER_CONF_DIRS: tuple[str, ...] = ("etc/systemd", "run/systemd", "usr/local/lib/systemd", "usr/lib/systemd",
                                      "lib/systemd")
MANAGER_ENV_KEYS = ("DefaultEnvironment", "ManagerEnvironment")
# What may come from the manager: locale and time zone, and a PATH of the standard system directories only.
_ALLOWED_ENV = re.compile(r"LANG|LANGUAGE|LC_[A-Z_]+|TZ")
_SYSTEM_PATH = frozenset({"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
                          "/snap/bin"})


def _allowed(name: str, value: str) -> bool:
    if name == "PATH":
        return all(d in _SYSTEM_PATH for d in value.split(":"))
    return bool(_ALLOWED_ENV.fullmatch(name))


def _manager_files(root: Path) -> list[Path]:
    out = []
    for d in MANAGER_CONF_DIRS:
        base = root / d
        out.append(base / "system.conf")
        conf_d = base / "system.conf.d"
        if conf_d.is_dir():
            out += sorted(p for p in conf_d.iterdir() if p.name.endswith(".conf"))
    return [p for p in out if p.exists() or p.is_symlink()]


def _assignments(value: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(value)
    except ValueError:
        return [("(unparsable)", value)]
    return [(w.partition("=")[0], w.partition("=")[2]) for w in words]


def manager_environment_problems(layout: Layout, live_env: Mapping[str, str] | None) -> list[str]:
    """Every variable the service manager would give our units that is not locale, time zone or the system
    PATH: from its configuration files (naming each) and, live, from `systemctl show-environment`."""
    bad = []
    for p in _manager_files(layout.root):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            bad.append(f"{layout.live_path(p)} is unreadable: the manager's environment cannot be checked")
            continue
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() in MANAGER_ENV_KEYS:
                bad += [f"{layout.live_path(p)}: {key.strip()}= sets {name} (reaches every unit, ours included)"
                        for name, v in _assignments(value.strip()) if not _allowed(name, v)]
    for name, value in sorted((live_env or {}).items()):
        if not _allowed(name, value):
            bad.append(f"the running manager's environment (systemctl show-environment) has {name}: it reaches "
                       "every unit it starts, ours included")
    return bad
