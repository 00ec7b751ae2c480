"""A release on disk and its typed record.

`releases/<version>/release.json` says how the release was installed (profile, port, GPUs, interpreter, the
signed manifest's digest, the digests of what was rendered). It is written once, validated before it is
written, read in one place (`read_release`), and carries a schema version. A record that is missing, damaged
or of the wrong shape reads as None: that directory is not a release.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gptossctl.errors import CheckFailed
from gptossctl.fsutil import atomic_write
from gptossctl.install.layout import Layout

RELEASE_SCHEMA = "gptossctl.release/1"
RELEASE_JSON = "release.json"
# The files of a legacy release's one vLLM (before the router was always in front); replicas have their own.
CONFIG = "vllm.yaml"
ENV_FILE = "service.env"
UNIT_COPY = "unit.service"
ROUTER_CONFIG = "router.conf"  # the router's approved nginx configuration
ROUTER_UNIT_COPY = "router.service"  # the release's copy of the router's unit
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000


def replica_files(index: int) -> tuple[str, str, str]:
    """(config, environment file, unit copy) of replica `index`."""
    return f"vllm-r{index}.yaml", f"service-r{index}.env", f"unit-r{index}.service"



def endpoint_url(host: str, port: int) -> str:
    """http://host:port, an IPv6 address in brackets (`--host ::1` is loopback too)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

@dataclass(frozen=True)
class ReplicaRecord:
    """One vLLM replica of a release with several: its own loopback port, pinned to its GPUs."""

    index: int
    port: int
    gpus: tuple[int, ...] = ()  # nvidia-smi indices (PCI bus order); empty on the CPU
    uuids: tuple[str, ...] = ()  # the GPUs' UUIDs when the probe knew them (for the auditor)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def files(self) -> tuple[str, str, str]:
        return replica_files(self.index)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "port": self.port, "gpus": list(self.gpus), "uuids": list(self.uuids)}

    @classmethod
    def from_dict(cls, doc: Any) -> ReplicaRecord | None:
        if not isinstance(doc, dict) or set(doc) - {"index", "port", "gpus", "uuids"}:
            return None
        index, port, gpus, uuids = doc.get("index"), doc.get("port"), doc.get("gpus", []), doc.get("uuids", [])
        if not (isinstance(index, int) and isinstance(port, int) and _is(index, int) and _is(port, int)
                and isinstance(gpus, list) and isinstance(uuids, list)
                and all(_is(g, int) for g in gpus) and all(isinstance(u, str) for u in uuids)):
            return None
        return cls(index, port, tuple(gpus), tuple(uuids))


@dataclass(frozen=True)
class EdgeRecord:
    """The router's listener on the site's network, as install approved it (install --listen): where it listens,
    which peers besides loopback may reach it, and digests of the TLS files it was installed with (never the
    key: the SHA-256 of the public key the private key holds). Compliance renders the router again from this."""

    host: str  # an IP literal; 0.0.0.0 or :: for every address
    port: int
    cert_sha256: str  # SHA-256 of the certificate file (leaf and intermediates) as installed
    key_sha256: str  # SHA-256 of the DER public key of the private key (the key itself is never recorded)
    client_ca_sha256: str = ""  # SHA-256 of the client CA file: mutual TLS; "" for none
    allow: tuple[str, ...] = ("any",)  # IPAddressAllow= of the router besides localhost: CIDRs, or "any"

    @property
    def mutual_tls(self) -> bool:
        return bool(self.client_ca_sha256)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "cert_sha256": self.cert_sha256, "key_sha256": self.key_sha256,
                "client_ca_sha256": self.client_ca_sha256, "allow": list(self.allow)}

    @classmethod
    def from_dict(cls, doc: Any) -> EdgeRecord | None:
        if not isinstance(doc, dict) or set(doc) - {"host", "port", "cert_sha256", "key_sha256", "client_ca_sha256",
                                                    "allow"}:
            return None
        strings = [doc.get(k) for k in ("host", "cert_sha256", "key_sha256")] + [doc.get("client_ca_sha256", "")]
        allow = doc.get("allow", ["any"])
        if not (all(isinstance(s, str) for s in strings) and _is(doc.get("port"), int) and isinstance(allow, list)
                and allow and all(isinstance(a, str) for a in allow)):
            return None
        # What the router's nginx.conf is rendered from (its `listen` line, IPAddressAllow=): checked, never escaped.
        if not (_ip(doc["host"]) and 1 <= doc["port"] <= 65535
                and all(_SHA256.fullmatch(str(s)) for s in strings[1:3])
                and (strings[3] == "" or _SHA256.fullmatch(str(strings[3])))
                and (allow == ["any"] or all(_cidr(a) for a in allow))):
            return None
        return cls(doc["host"], doc["port"], doc["cert_sha256"], doc["key_sha256"], doc.get("client_ca_sha256", ""),
                   tuple(allow))


@dataclass(frozen=True)
class ReleaseRecord:
    version: int
    bundle: str
    instance: str
    profile: str
    served_name: str
    manifest_sha256: str
    python: str
    installed_at: str = ""
    expires: str = ""
    rendered_by: str = ""
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    tensor_parallel: int = 1
    gpus: tuple[int, ...] = ()
    signers: tuple[str, ...] = ()
    external_env: bool = False
    rendered: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of what install rendered
    # `port` is the router's; each replica has its own loopback port. Empty only in a record written before
    # the router was always in front: one vLLM on `port` (install/serving.py reads it as a legacy set).
    replicas: tuple[ReplicaRecord, ...] = ()
    router: str = ""  # the nginx binary the router unit runs
    # The router's TLS listener on the site's network (install --listen); None: loopback only. Written only when
    # set, so a record without it reads and writes back byte for byte as before.
    edge: EdgeRecord | None = None

    @property
    def endpoint(self) -> str:
        return endpoint_url(self.host, self.port)

    @property
    def legacy_single(self) -> bool:
        """Written before the router was always in front: one vLLM unit on `port`, no router."""
        return not self.replicas

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpus"], d["signers"] = list(self.gpus), list(self.signers)
        d["replicas"] = [r.to_dict() for r in self.replicas]
        if not self.replicas:  # a legacy record is written back exactly as it was
            del d["replicas"], d["router"]
        if self.edge is None:
            del d["edge"]
        else:
            d["edge"] = self.edge.to_dict()
        return {"schema": RELEASE_SCHEMA, **d}

    @classmethod
    def from_dict(cls, doc: Any) -> ReleaseRecord | None:
        """The record, or None when the document is not one (wrong schema, missing fields, wrong types)."""
        if not isinstance(doc, dict) or doc.get("schema", RELEASE_SCHEMA) != RELEASE_SCHEMA:
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc:
                continue
            v = doc[f.name]
            if f.name in ("gpus", "signers"):
                want: type = int if f.name == "gpus" else str
                if not isinstance(v, list) or not all(isinstance(x, want) and not isinstance(x, bool) for x in v):
                    return None
                v = tuple(v)
            elif f.name == "replicas":
                parsed = [ReplicaRecord.from_dict(r) for r in v] if isinstance(v, list) else [None]
                if any(r is None for r in parsed):
                    return None
                v = tuple(r for r in parsed if r is not None)
            elif f.name == "edge":
                v = EdgeRecord.from_dict(v)
                if v is None:
                    return None
            elif f.name == "rendered":
                if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
                    return None
            elif not _is(v, f.type):
                return None
            values[f.name] = v
        try:
            return cls(**values)
        except TypeError:  # a required field is missing
            return None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _ip(text: str) -> bool:
    try:
        return str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


def _cidr(text: str) -> bool:
    try:
        return str(ipaddress.ip_network(text, strict=False)) == text
    except ValueError:
        return False


def _is(value: Any, kind: object) -> bool:
    if kind in ("int", int):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("bool", bool):
        return isinstance(value, bool)
    return isinstance(value, str)


def read_release(release: Path) -> ReleaseRecord | None:
    try:
        doc = json.loads((release / RELEASE_JSON).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return ReleaseRecord.from_dict(doc)


def write_release(release: Path, record: ReleaseRecord) -> None:
    assert ReleaseRecord.from_dict(record.to_dict()) == record  # what is written reads back as itself
    atomic_write(release / RELEASE_JSON, json.dumps(record.to_dict(), indent=2) + "\n", 0o644)


def served_name(manifest: Any) -> str:
    model = manifest.components.get("model", {})
    return str(model.get("name") or manifest.name).rsplit("/", 1)[-1]


def default_instance(manifest: Any) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", served_name(manifest).lower()).strip("-")[:48] or "default"


def current_version(layout: Layout) -> int | None:
    try:
        return int(os.readlink(layout.current).rstrip("/").rsplit("/", 1)[-1])
    except (OSError, ValueError):
        return None


def current_record(layout: Layout) -> ReleaseRecord | None:
    cur = current_version(layout)
    return read_release(layout.release(cur)) if cur is not None else None


def switch_current(layout: Layout, version: int) -> None:
    """Point `current` at releases/<version> atomically (rename over the old link)."""
    if not layout.release(version).is_dir():
        raise CheckFailed(f"release {version} is not installed", code="install.no_release",
                          hint="install the bundle of that version first")
    tmp = layout.opt / ".current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("releases") / str(version))
    os.replace(tmp, layout.current)


def installed_versions(layout: Layout) -> list[int]:
    try:
        return sorted(int(p.name) for p in layout.releases.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return []


def unit_release(layout: Layout, unit: Path | None = None) -> int | None:
    """The release an installed unit points at (WorkingDirectory=.../releases/N); the instance's by default."""
    try:
        m = re.search(r"^WorkingDirectory=.*/releases/(\d+)\s*$", (unit or layout.unit_path).read_text(), re.M)
    except (OSError, UnicodeDecodeError):
        return None
    return int(m.group(1)) if m else None
