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
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from gptossctl.adapters.nspawn import CACHE, PATH, Container, debian_rootfs  # noqa: F401 - re-exported
from gptossctl.adapters.nspawn import PACKAGES as BASE_PACKAGES
from gptossctl.adapters.nspawn import need as _need_tool

# The base packages carry nginx-light: the router in front of every instance (install's preflight requires it).
PACKAGES = BASE_PACKAGES
REPO = Path(__file__).resolve().parents[2]
# Fleet hosts add sshd: Ansible reaches them over SSH like any managed host.
FLEET_PACKAGES = PACKAGES + ",openssh-server"


def gptossctl_wheelhouse() -> Path:
    """What an air-gapped host bootstraps gptossctl from: this checkout's wheel plus its locked runtime
    dependencies (requirements-runtime.lock), made by scripts/demo_wheels.py as the demo makes it."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_wheels.py"), "--gptossctl", str(CACHE)],
                         check=True, capture_output=True, text=True).stdout
    return Path(out.split()[-1])


def bootstrap_cli(c: Container) -> None:
    """Bootstrap gptossctl in a booted container as the README says: uv from the wheelhouse bound at
    /media/house, no index, no network."""
    c.run("sh", "-c", "cd /tmp && python3 -m zipfile -e /media/house/uv-*.whl uvx && "
          "install -m 0755 uvx/uv-*.data/scripts/uv /usr/local/bin/uv && "
          "uv venv -q --python /usr/bin/python3 /opt/gptossctl && "
          "uv pip install -q --offline --no-index --find-links /media/house --python /opt/gptossctl/bin/python gptossctl")


def _need(tool: str, package: str) -> str:
    return _need_tool(tool, package)


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
            stack.callback(c.discard)
            hosts.append(FleetHost(f"fleet-{i}", guest_addr, c, veth))
        for h in hosts:
            h.container.boot()
            h.container.run("systemctl", "is-active", "ssh.service")
        yield hosts
