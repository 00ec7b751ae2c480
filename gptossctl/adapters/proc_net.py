"""The kernel's own view of TCP listeners (/proc/net/tcp and tcp6): what really listens, whatever the
configuration says."""

from __future__ import annotations

import ipaddress
from pathlib import Path


def _sockets() -> list[tuple[str, list[str]]]:
    """(table, columns) of every row of /proc/net/tcp and tcp6 in this network namespace."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        rows += [(name, line.split()) for line in lines]
    return rows


def listeners(port: int) -> list[str]:
    """Addresses with a listening TCP socket on `port` in this network namespace (/proc/net/tcp{,6})."""
    out = []
    for name, cols in _sockets():
        addr, _, hexport = cols[1].partition(":")
        if cols[3] != "0A" or int(hexport, 16) != port or len(addr) != (8 if name == "tcp" else 32):
            continue
        raw = bytes.fromhex(addr)
        # The kernel prints each 32-bit word in host (little-endian) order.
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        out.append(str(ipaddress.ip_address(raw)))
    return out


def established(port: int) -> int:
    """Accepted TCP connections to local `port` that are open now (ESTABLISHED, server side), in this network
    namespace: with a router that keeps no idle upstream connections, the requests it has in flight there."""
    return sum(1 for _name, cols in _sockets()
               if len(cols) > 3 and cols[3] == "01" and int(cols[1].rpartition(":")[2], 16) == port)
