"""Where an installed instance lives (FHS). Every path hangs off `root`, so `--root DIR` stages a tree.

    /opt/gptoss/<instance>/releases/<version>/   the bundle's files, venv/, rendered config (immutable)
    /opt/gptoss/<instance>/current -> releases/<version>   the last release proven healthy
    /etc/gptoss/<instance>/api-key                the generated API key (0600 root)
    /etc/gptoss/<instance>/trust/                 the public keys and threshold the release was verified with
    /etc/systemd/system/gptoss@<instance>-r<k>.service   replica k >= 0 (its own port, GPUs, state and cache)
    /etc/systemd/system/gptoss-router@<instance>.service the router (nginx) on the instance's port
    /opt/gptoss/<instance>/router.conf            the router's running configuration (a copy of the release's)
    /etc/gptoss/<instance>/router-key.map         the key as the router's credential (0600 root)
    /etc/systemd/system/gptoss@<instance>.service a legacy release's one vLLM unit (before the router was always
                                                  in front; install/serving.py)
    /etc/sysusers.d/gptoss.conf                   the dedicated system user
    /var/lib/gptoss/<instance>-r<k>, /var/cache/gptoss/<instance>-r<k>   StateDirectory=, CacheDirectory=
    /var/log/gptoss/audit.jsonl                   the hash-chained audit log (and audit.head)
    /var/lib/gptossctl/audit.anchor               the log's newest entry, kept apart from it
    /var/lib/gptoss-compliance/<instance>.{json,sarif,junit.xml,prom}   the daily compliance reports
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gptossctl.errors import EnvironmentNotReady, UsageError
from gptossctl.fsutil import exclusive_lock

INSTANCE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")  # matched whole: "x\n" is not an instance name
SERVICE_USER = "gptoss"


def check_instance(name: str) -> str:
    if not INSTANCE_RE.fullmatch(name):
        raise UsageError(f"instance name {name!r} is not valid", code="install.bad_instance",
                         hint="use lowercase letters, digits and '-', at most 48 characters")
    return name


@dataclass(frozen=True)
class Layout:
    root: Path = Path("/")
    instance: str = "default"

    @property
    def staged(self) -> bool:
        return self.root.resolve() != Path("/")

    @property
    def base(self) -> Path:
        return self.root / "opt" / "gptoss"

    @property
    def opt(self) -> Path:
        return self.base / self.instance

    @property
    def releases(self) -> Path:
        return self.opt / "releases"

    @property
    def current(self) -> Path:
        return self.opt / "current"

    @property
    def lock(self) -> Path:
        return self.base / ".lock"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "gptoss" / self.instance

    @property
    def api_key(self) -> Path:
        return self.etc / "api-key"

    @property
    def trust_dir(self) -> Path:
        """The trust of installs by older gptossctl (*.pub + policy.json): read once, to migrate it."""
        return self.etc / "trust"

    @property
    def trust_root(self) -> Path:
        """The instance's signed trust root (gptossctl.trust-root/1): the only trust install, rollback and
        compliance read."""
        return self.etc / "trust-root.json"

    @property
    def compliance_dir(self) -> Path:
        return self.root / "var" / "lib" / "gptoss-compliance"

    @property
    def unit_name(self) -> str:
        return f"gptoss@{self.instance}.service"

    @property
    def compliance_unit(self) -> str:
        """The compliance check's oneshot service, started daily by `compliance_timer`."""
        return f"gptoss-compliance@{self.instance}.service"

    @property
    def compliance_timer(self) -> str:
        return f"gptoss-compliance@{self.instance}.timer"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc" / "systemd" / "system"

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / self.unit_name

    @property
    def sysusers(self) -> Path:
        return self.root / "etc" / "sysusers.d" / f"{SERVICE_USER}.conf"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "gptoss" / self.instance

    @property
    def cache(self) -> Path:
        return self.root / "var" / "cache" / "gptoss" / self.instance

    @property
    def uv_cache(self) -> Path:
        return self.root / "var" / "cache" / "gptoss" / ".uv"

    @property
    def log_dir(self) -> Path:
        return self.root / "var" / "log" / "gptoss"

    @property
    def audit_anchor(self) -> Path:
        """The audit log's newest (seq, hash), kept apart from the log: deleting the log and its head together
        is still caught."""
        return self.root / "var" / "lib" / "gptossctl" / "audit.anchor"

    def replica_unit_name(self, index: int) -> str:
        """Replica k is an instance of the same template, so StateDirectory=, CacheDirectory= and the journal
        follow %i: gptoss@<instance>-r<k>."""
        return f"gptoss@{self.instance}-r{index}.service"

    def replica_unit_path(self, index: int) -> Path:
        return self.unit_dir / self.replica_unit_name(index)

    def replica(self, index: int) -> Layout:
        """Where replica k keeps its state and cache (what its unit's %i names)."""
        return Layout(self.root, f"{self.instance}-r{index}")

    def replica_units(self) -> list[int]:
        """The replica indices that have a unit installed, whatever the records say."""
        pattern = re.compile(rf"gptoss@{re.escape(self.instance)}-r(\d+)\.service")
        try:
            names = [p.name for p in self.unit_dir.iterdir()]
        except OSError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := pattern.fullmatch(n)))

    @property
    def router_unit_name(self) -> str:
        return f"gptoss-router@{self.instance}.service"

    @property
    def router_unit_path(self) -> Path:
        return self.unit_dir / self.router_unit_name

    @property
    def router_config(self) -> Path:
        """The configuration the router runs: the release's router.conf, or while a replica is drained during
        a rolling upgrade, the same with that replica marked down."""
        return self.opt / "router.conf"

    @property
    def router_key(self) -> Path:
        """The API key in the router's own format, loaded as a systemd credential (never in its config)."""
        return self.etc / "router-key.map"

    def release(self, version: int) -> Path:
        return self.releases / str(version)

    def live_path(self, p: Path) -> Path:
        """A path as the booted system will see it (strip the staging root)."""
        return Path("/") / p.relative_to(self.root)

    def instances(self) -> list[str]:
        if not self.base.is_dir():
            return []
        try:
            return sorted(p.name for p in self.base.iterdir() if p.is_dir() and INSTANCE_RE.fullmatch(p.name))
        except OSError:  # a --root that is not a tree gptossctl made: no instance in it
            return []


def pick_instance(root: Path, instance: str | None) -> str:
    """The instance a command acts on: the one named, or the only one installed under root."""
    if instance:
        return check_instance(instance)
    found = Layout(root).instances()
    if len(found) != 1:
        raise UsageError(f"{'no instance is' if not found else 'several instances are'} installed under {root}"
                         + (f": {', '.join(found)}" if found else ""), code="service.which_instance",
                         hint="name one with --instance" if found else "install one first: gptossctl install "
                              "BUNDLE --trust KEY.pub")
    return found[0]


def check_writable(layout: Layout) -> None:
    """The prefix, the unit directory and /etc (or the nearest directory that exists above each) are writable
    by this user: checked before anything is written, so a refusal leaves nothing behind."""
    for p in (layout.base, layout.unit_dir, layout.etc.parent):
        at = p
        while not at.exists():
            at = at.parent
        if not os.access(at, os.W_OK):
            raise EnvironmentNotReady(f"{at} is not writable by this user", code="install.not_writable",
                                      hint="run as root (sudo), or stage into a tree you own with --root DIR")


# Where install writes under a root: each of these, every instance folder in the first four, and every release.
_WRITTEN = ("opt/gptoss", "etc/gptoss", "var/lib/gptoss", "var/cache/gptoss", "etc/systemd/system",
            "etc/sysusers.d", "var/lib/gptossctl", "var/lib/gptoss-compliance", "var/log/gptoss")


def check_confined(root: Path) -> None:
    """A staged --root keeps everything install writes inside it: a symbolic link on the way to any of it
    (etc/gptoss -> /etc/gptoss, a release folder -> /home/victim) that leads out of the root is refused,
    naming the link, before anything is written (exit 2, install.link_escapes_root)."""
    if root.resolve() == Path("/"):
        return
    real_root = Path(os.path.realpath(root))
    paths = [root / d for d in _WRITTEN]
    for d in _WRITTEN[:4]:
        _confined(root, real_root, root / d)
        for inst in _children(root / d):
            paths.append(inst)
            if d == "opt/gptoss":
                paths += [inst / "releases", *_children(inst / "releases")]
    for p in paths:
        _confined(root, real_root, p)


def _children(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir()) if d.is_dir() else []
    except OSError:
        return []


def _confined(root: Path, real_root: Path, path: Path) -> None:
    at = root
    for part in path.relative_to(root).parts:
        at = at / part
        if at.is_symlink():
            target = Path(os.path.realpath(at))
            if not target.is_relative_to(real_root):
                raise UsageError(f"{at} is a symbolic link to {target}, outside --root {root}: install would "
                                 "write there", code="install.link_escapes_root",
                                 hint=f"remove the link {at} (a staged install writes only inside its root), or "
                                      "stage into a root without links that lead out of it")
        elif not at.exists():
            return


@contextmanager
def install_lock(layout: Layout) -> Iterator[None]:
    """One change at a time per host: a second installer is refused, not interleaved."""
    with exclusive_lock(layout.lock, busy=f"another gptossctl is changing {layout.base}",
                        hint="wait for it to finish; the lock is released when that process ends"):
        yield
