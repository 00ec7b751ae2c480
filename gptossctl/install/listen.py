"""`install --listen ADDR:PORT --tls-cert F --tls-key F [--client-ca F] [--allow-from CIDR]`: the router's TLS
listener on the site's network, from the request to the files its master reads.

(1) `load_edge`: the address parsed, the files read once and judged (install/tls.py: the certificate matches
the key, is within its dates, and chains to --client-ca where given), before anything is written; a refusal
is a usage error (exit 2) with every finding. (2) `EdgeInput.record`: what the release record keeps (address,
peers, digests; never the key). (3) `edge_installed`: under the install lock and before activation, the
TLS files are copied root-only into /etc/gptoss/<instance>/edge (0600 in 0700), with the workers' user
(sysusers.d), their temporary directories and the access log's rotation; a failure of anything after it
puts every one of those files back as it was, so a failed install leaves no half edge.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import CheckFailed, UsageError
from gptossctl.fsutil import atomic_write, read_bytes
from gptossctl.install.consumers import edge_log_dir
from gptossctl.install.edge import (
    CLIENT_CA,
    CONSUMERS_HTTP,
    CONSUMERS_SERVER,
    EDGE_DIR,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    render_consumer_includes,
    render_logrotate,
)
from gptossctl.install.layout import Layout
from gptossctl.install.release import EdgeRecord
from gptossctl.install.router import EDGE_USER, TEMP_KINDS, edge_temp_dir
from gptossctl.install.tls import CertReport, check_certificate, public_key_sha256

CLOSE = "none"  # --listen none: back to loopback only
EDGE_SYSUSERS = f'u {EDGE_USER} - "gpt-oss router workers (nginx, network edge)" - /usr/sbin/nologin\n'
LOGROTATE = "gptoss-edge"


@dataclass(frozen=True)
class ListenRequest:
    """What the install command was given for the site's network (paths, not yet read)."""

    address: str  # ADDR:PORT, or CLOSE
    cert: Path = Path()
    key: Path = Path()
    client_ca: Path | None = None
    allow: tuple[str, ...] = ()
    chain_ca: Path | None = None  # what the chain is checked against, when not --client-ca (a kept listener)
    kept: int | None = None  # the release whose listener an upgrade keeps (no --listen given)

    @property
    def closes(self) -> bool:
        return self.address == CLOSE

    @property
    def args(self) -> list[str]:
        """For the audit log: the address and the files' paths (never their contents)."""
        if self.closes or self.kept is not None:
            return [f"--listen={self.address}"] if self.closes else []
        return [f"--listen={self.address}", f"--tls-cert={self.cert}", f"--tls-key={self.key}"] + \
            ([f"--client-ca={self.client_ca}"] if self.client_ca else []) + [f"--allow-from={a}" for a in self.allow]


@dataclass(frozen=True)
class EdgeInput:
    """The listener as judged: the files' bytes as read once (what is copied is what was checked)."""

    host: str
    port: int
    allow: tuple[str, ...]
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None
    report: CertReport
    chain_ca_pem: bytes | None = None  # the chain's anchor (TLS_CA): the client CA, or a kept one
    kept: int | None = None

    def record(self) -> EdgeRecord:
        return EdgeRecord(self.host, self.port, hashlib.sha256(self.cert_pem).hexdigest(),
                          public_key_sha256(self.key_pem),
                          hashlib.sha256(self.client_ca_pem).hexdigest() if self.client_ca_pem else "", self.allow)


def describe(edge: EdgeRecord | None) -> str:
    """The address an install opens, in words (dry run, result)."""
    if edge is None:
        return "loopback only: nothing listens on the site's network (install --listen ADDR:PORT opens it)"
    peers = "any peer" if "any" in edge.allow else "peers in " + ", ".join(edge.allow)
    return (f"{edge.address} open to {peers} (TLS 1.2/1.3" + (", mutual TLS" if edge.mutual_tls else "")
            + "); plain HTTP stays on loopback")


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT with ADDR an IP address ([v6] in brackets); 0.0.0.0 or [::] for every address."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        ip, number = None, 0
    if not sep or ip is None or not 1 <= number <= 65535 or ("[" in text) != (ip.version == 6):
        raise UsageError(f"--listen {text[:80]!r} is not ADDR:PORT", code="install.bad_listen",
                         hint="give an IP address of this host and a port: --listen 10.0.0.5:443, --listen "
                              "0.0.0.0:8443 (every address), --listen [2001:db8::5]:443")
    return str(ip), number


def _allow(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values or "any" in values:
        return ("any",)
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise UsageError(f"--allow-from {v[:80]!r} is not an address or network", code="install.bad_allow",
                             hint="give CIDRs of the clients' networks (10.20.0.0/16, 2001:db8::/48), or any") from None
    return tuple(dict.fromkeys(out))


def _same_socket(a: str, b: str) -> bool:
    wild = ("0.0.0.0", "::")
    return a == b or a in wild or b in wild or {a, b} <= {"127.0.0.1", "::1", "localhost"}


def load_edge(req: ListenRequest, *, router_host: str, taken: set[int]) -> EdgeInput:
    """(1) The listener judged before anything changes; `taken`: the ports the router and its replicas use."""
    host, port = parse_listen(req.address)
    if port in taken and _same_socket(host, router_host):
        raise UsageError(f"--listen {req.address} takes port {port}, which the router or a replica uses on "
                         "loopback", code="install.listen_conflict",
                         hint="give the site's listener another port (e.g. 443 or 8443), or move --port")
    allow = _allow(req.allow)
    cert = read_bytes(req.cert, what="--tls-cert", code="install.tls_unreadable")
    key = read_bytes(req.key, what="--tls-key", code="install.tls_unreadable")
    ca = read_bytes(req.client_ca, what="--client-ca", code="install.tls_unreadable") if req.client_ca else None
    anchor = read_bytes(req.chain_ca, what="site CA", code="install.tls_unreadable") if req.chain_ca else ca
    try:
        report = check_certificate(cert, key, anchor)
    except (CheckFailed, UsageError) as exc:
        raise UsageError(f"--tls-cert {req.cert} / --tls-key {req.key}: {exc.message}", code="install.tls_refused",
                         findings=exc.findings,
                         hint=(exc.hint + "; " if exc.hint and not exc.findings else "")
                         + ("renew the installed certificate with 'gptossctl tls rotate' first, or give --listen with "
                            "new files" if req.kept is not None else
                            "give a certificate that matches the key, is within its dates and chains (intermediates "
                            "after the leaf) to --client-ca") + "; nothing was changed") from None
    return EdgeInput(host, port, allow, cert, key, ca, report, anchor, req.kept)


def kept_listen(layout: Layout, edge: EdgeRecord, version: int) -> ListenRequest:
    """An upgrade without --listen keeps the installed release's listener (as --replicas is kept), with the
    files its router serves now (a `tls rotate` since included): judged again like new ones."""
    d = layout.etc / EDGE_DIR
    return ListenRequest(edge.address, d / TLS_CERT, d / TLS_KEY, d / CLIENT_CA if edge.mutual_tls else None,
                         edge.allow, chain_ca=d / TLS_CA if (d / TLS_CA).exists() else None, kept=version)


# ---------------------------------------------------------------- on the host


def _owner(layout: Layout, user: str) -> tuple[int, int] | None:
    """uid and gid of `user` in the target's /etc/passwd (the staged tree's when staged)."""
    try:
        for line in (layout.root / "etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if len(parts) > 3 and parts[0] == user:
                return int(parts[2]), int(parts[3])
    except (OSError, ValueError):
        return None
    return None


def prepare_edge_dirs(layout: Layout) -> str:
    """The workers' temporary directories, owned by them in a root 0711 directory (so nginx's master never chowns,
    and a worker cannot swap one for a link), and the access log's directory. Ownership is set only as root
    (a staged tree built by a user keeps that user's)."""
    base = edge_temp_dir(layout)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o711)
    owner = _owner(layout, EDGE_USER)
    for kind in TEMP_KINDS:
        d = base / kind
        d.mkdir(exist_ok=True)
        d.chmod(0o700)
        if owner is not None and os.geteuid() == 0:
            os.chown(d, *owner, follow_symlinks=False)
    logs = edge_log_dir(layout)  # the access logs only: the router's master never writes beside the audit log
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(0o755)
    return f"{layout.live_path(base)}/{{{','.join(TEMP_KINDS)}}} owned by {EDGE_USER}"


def edge_instances(layout: Layout, *, closing: bool = False) -> list[str]:
    """The instances of the root whose router has an edge (its folder): this one too, unless it is `closing`."""
    found = {p.parent.name for p in layout.etc.parent.glob(f"*/{EDGE_DIR}") if p.is_dir()}
    return sorted(found - {layout.instance} if closing else found | {layout.instance})


LISTENER_FILES = (TLS_KEY, CONSUMERS_HTTP, CONSUMERS_SERVER, TLS_CERT, TLS_CA, CLIENT_CA)  # the key first


def has_listener_files(layout: Layout) -> bool:
    """A listener was laid down here (its TLS files; the consumers' commands write the includes on their own)."""
    return any((layout.etc / EDGE_DIR / n).exists() for n in (TLS_KEY, TLS_CERT))


def remove_edge(layout: Layout) -> str:
    """After a switch to a release without a listener: the edge's files go, the TLS key first (the includes hold
    the instance's API key), and the logrotate file (kept for the root's other edges, without this one). The
    consumers' own key store stays (the consumers commands own it: revoke removes a key) in the root-only
    folder; the folder goes when nothing else is in it."""
    d = layout.etc / EDGE_DIR
    for name in LISTENER_FILES:
        (d / name).unlink(missing_ok=True)
    if not any(d.iterdir()):
        shutil.rmtree(d, ignore_errors=True)
    logrotate, others = layout.root / "etc/logrotate.d" / LOGROTATE, edge_instances(layout, closing=True)
    if others:
        atomic_write(logrotate, render_logrotate(layout.live_path(edge_log_dir(layout)), instances=others), 0o644)
    else:
        logrotate.unlink(missing_ok=True)
    return (f"edge removed: {layout.live_path(d)}'s TLS key, certificate, CAs and consumers' includes, and "
            + (f"this instance out of {layout.live_path(logrotate)}" if others else
               f"{layout.live_path(logrotate)}"))


@contextmanager
def edge_installed(layout: Layout, systemd: Systemd, edge: EdgeInput, api_key: str) -> Iterator[str]:
    """(3) Lay the edge's files down; on any failure inside the block, put back every file as it was."""
    d = layout.etc / EDGE_DIR
    sysusers = layout.sysusers.with_name(f"{EDGE_USER}.conf")
    logrotate = layout.root / "etc/logrotate.d" / LOGROTATE
    files = [d / n for n in (TLS_CERT, TLS_KEY, TLS_CA, CLIENT_CA, CONSUMERS_HTTP, CONSUMERS_SERVER)]
    files += [sysusers, logrotate]
    before = {p: (p.read_bytes(), p.stat().st_mode & 0o777) if p.is_file() else None for p in files}
    try:
        layout.etc.mkdir(parents=True, exist_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)  # root only: the router's master reads it as root, its workers never
        atomic_write(d / TLS_KEY, edge.key_pem, 0o600)  # the key first: a new cert never meets the old key
        atomic_write(d / TLS_CERT, edge.cert_pem, 0o600)
        # The chain's anchor for compliance, and the clients' CA for nginx.
        for name, pem in ((TLS_CA, edge.chain_ca_pem), (CLIENT_CA, edge.client_ca_pem)):
            if pem is not None:
                atomic_write(d / name, pem, 0o600)
            else:
                (d / name).unlink(missing_ok=True)
        if not (d / CONSUMERS_HTTP).exists() or not (d / CONSUMERS_SERVER).exists():
            http, server = render_consumer_includes([], {}, upstream_key=api_key)  # no consumer yet
            atomic_write(d / CONSUMERS_HTTP, http, 0o600)
            atomic_write(d / CONSUMERS_SERVER, server, 0o600)
        atomic_write(sysusers, EDGE_SYSUSERS, 0o644)
        systemd.sysusers(sysusers)
        dirs = prepare_edge_dirs(layout)
        atomic_write(logrotate, render_logrotate(layout.live_path(edge_log_dir(layout)), instances=edge_instances(layout)),
                     0o644)
        yield (f"{layout.live_path(d)}: certificate {edge.report.subject} (expires "
               f"{edge.report.not_after.date().isoformat()}) and its key, 0600; user {EDGE_USER}; {dirs}")
    except BaseException:
        for p, old in before.items():
            if old is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write(p, old[0], old[1])
        raise


def listen_request(address: str | None, *, cert: Path | None, key: Path | None, client_ca: Path | None,
                   allow: tuple[str, ...] = ()) -> ListenRequest | None:
    """The command's options as one request: --listen needs --tls-cert and --tls-key; the TLS options and
    --allow-from mean nothing without --listen (refused, so a typo never installs a loopback-only router the
    operator believes is open)."""
    if address == CLOSE and not (cert or key or client_ca or allow):
        return ListenRequest(CLOSE)
    if address is None or address == CLOSE:
        given = [o for o, v in (("--tls-cert", cert), ("--tls-key", key), ("--client-ca", client_ca),
                                ("--allow-from", allow)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} given without --listen ADDR:PORT", code="install.tls_without_listen",
                             hint="add --listen ADDR:PORT to open the router on the site's network, or drop them")
        return None
    if cert is None or key is None:
        raise UsageError("--listen needs --tls-cert and --tls-key", code="install.listen_needs_tls",
                         hint="give the certificate (leaf, then intermediates) and its unencrypted PEM key; plain "
                              "HTTP never leaves loopback")
    return ListenRequest(address, cert, key, client_ca, allow)
