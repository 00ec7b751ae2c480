"""systemctl, journalctl and systemd-sysusers, the only code that talks to systemd.

With a staging root (`--root DIR`) only what works offline on a tree is done (`systemctl --root enable`,
`systemd-sysusers --root`); starting, stopping and the journal need a running systemd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gptossctl.errors import EnvironmentNotReady, ServiceUnavailable


@dataclass(frozen=True)
class Exposure:
    score: float | None  # None: systemd-analyze printed no score (output says why)
    label: str
    output: str


@dataclass(frozen=True)
class Systemd:
    root: Path | None = None  # a staging tree; None: the running system

    @property
    def live(self) -> bool:
        return self.root is None

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        exe = shutil.which(tool)
        if exe is None:
            raise EnvironmentNotReady(f"{tool} is not installed", code="service.no_systemd",
                                      hint="install on a host run by systemd, or stage with --root DIR")
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ServiceUnavailable(f"{tool} {' '.join(args)} failed: {(res.stderr or res.stdout).strip()[:400]}",
                                     code="service.systemctl_failed",
                                     hint="see 'journalctl -xe' on the host; nothing was switched")
        return res

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        root = [f"--root={self.root}"] if self.root is not None else []
        return self._run("systemctl", *root, "--no-ask-password", *args, check=check)

    def require_running(self) -> None:
        """A live install needs a booted systemd (PID 1)."""
        if not Path("/run/systemd/system").is_dir():
            raise EnvironmentNotReady("this host is not running systemd", code="service.no_systemd",
                                      hint="stage the install with --root DIR and boot it, or use --no-start")

    def daemon_reload(self) -> None:
        if self.live:
            self.systemctl("daemon-reload")

    def enable(self, unit: str, *, now: bool = False) -> None:
        self.systemctl("enable", *(["--now"] if now else []), unit)

    def disable(self, unit: str) -> None:
        self.systemctl("disable", unit, check=False)

    def restart(self, unit: str) -> None:
        self.systemctl("reset-failed", unit, check=False)  # a start-limit hit must not block a fix
        # Blocking: returns once the old process is gone and the new one forked, so a /health answer
        # afterwards can only come from the new release.
        self.systemctl("restart", unit)

    def stop(self, unit: str) -> None:
        self.systemctl("stop", unit, check=False)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        if not self.live:
            return {}
        res = self.systemctl("show", unit, "--property=" + ",".join(props), check=False)
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out

    def active_state(self, unit: str) -> str:
        return self.show(unit, "ActiveState").get("ActiveState", "unknown") if self.live else "staged"

    def journal_tail(self, unit: str, lines: int = 40) -> str:
        if not self.live or shutil.which("journalctl") is None:
            return ""
        res = subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit],
                             capture_output=True, text=True, timeout=60)
        return res.stdout.strip()

    def sysusers(self, conf: Path) -> None:
        """Create the service user from its sysusers.d file (systemd's own way; idempotent)."""
        args = [f"--root={self.root}"] if self.root is not None else []
        self._run("systemd-sysusers", *args, str(conf))

    def security(self, unit: str) -> Exposure | None:
        """`systemd-analyze security --offline=true` of the unit as it is on disk (drop-ins included; in the
        staging tree when staged). None where systemd-analyze is not installed."""
        exe = shutil.which("systemd-analyze")
        if exe is None:
            return None
        root = [f"--root={self.root}"] if self.root is not None else []
        res = subprocess.run([exe, "security", "--offline=true", *root, unit], capture_output=True, text=True,
                             timeout=120)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", res.stdout)
        return Exposure(float(m.group(1)) if m else None, m.group(2) if m else "", res.stdout + res.stderr)


def delete_user(name: str) -> bool:
    """Remove a system user (the service user, on the last purge); True when it existed and was removed."""
    exe = shutil.which("userdel")
    return exe is not None and subprocess.run([exe, name], capture_output=True, timeout=60).returncode == 0


def manager_environment(systemd: Systemd) -> dict[str, str] | None:
    """`systemctl show-environment`: what the running manager passes to every unit (None when staged or it
    cannot be asked)."""
    if not systemd.live or shutil.which("systemctl") is None:
        return None
    try:
        res = systemd.systemctl("show-environment", check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    env: dict[str, str] = {}
    for line in res.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            env[k] = v
    return env
