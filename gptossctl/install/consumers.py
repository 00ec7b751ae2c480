"""Consumers of an instance: a name, a key (or two while one is rotated out), limits.

Two files, both under /etc/gptoss/<instance>:
- consumers.json (gptossctl.consumers/1, 0644): names, limits, created/rotated/revoked times and each key's
  fingerprint (the first 16 hex digits of its SHA-256). No secret: it may be read, reported and diffed.
- edge/keys.json (gptossctl.consumer-keys/1, 0600 root in the 0700 edge directory): the keys themselves,
  the only place they are kept after `consumers add` shows one once.
From both, the router's include files (install/edge.py) are rendered into edge/ (0600) and the router
reloads gracefully: new requests see the change within seconds, requests in flight finish.

Flow of a change: (1) the audit chain is intact (2) under the install lock, read both records (3) change
(4) write the key store, then the includes, then the registry (a crash between leaves a key that is valid
but listed nowhere only if the registry write fails: the next change rewrites all three) (5) audit entry
(6) reload. A rotated key's grace ends at `expires`: it is dropped from the includes by the next change or
`consumers sync` (which the compliance timer can run), never by the clock alone (nginx has no clock rule).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptossctl.adapters.openai_http import read_api_key
from gptossctl.adapters.systemd import Systemd
from gptossctl.durations import parse_duration
from gptossctl.errors import CheckFailed, EnvironmentNotReady, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, check_output_path, load_json, read_bytes
from gptossctl.hardware.profiles import load_profiles
from gptossctl.install import audit
from gptossctl.install.edge import (
    CONSUMERS_HTTP,
    CONSUMERS_SERVER,
    EDGE_DIR,
    ConsumerKey,
    Limits,
    check_consumer_name,
    default_limits,
    render_consumer_includes,
)
from gptossctl.install.layout import Layout, install_lock, pick_instance
from gptossctl.install.release import current_record
from gptossctl.probe.usage import BY, UsageSummary, summarise

REGISTRY_SCHEMA = "gptossctl.consumers/1"
KEYS_SCHEMA = "gptossctl.consumer-keys/1"
REGISTRY = "consumers.json"
KEYS = "keys.json"
KEY_PREFIX = "sk-gptoss-"


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise CheckFailed(f"{where}: {value!r} is not a time", code="consumers.bad_registry") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyRecord:
    fingerprint: str
    created: datetime
    expires: datetime | None = None  # set when a rotation made it the old key

    def valid(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "created": self.created.isoformat(),
                "expires": self.expires.isoformat() if self.expires else None}


@dataclass(frozen=True)
class Consumer:
    name: str
    created: datetime
    limits: Limits
    keys: tuple[KeyRecord, ...] = ()
    rotated: datetime | None = None
    revoked: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or _now()
        return {"name": self.name, "created": self.created.isoformat(), "limits": self.limits.to_dict(),
                "rotated": self.rotated.isoformat() if self.rotated else None,
                "revoked": self.revoked.isoformat() if self.revoked else None,
                "keys": [k.to_dict() | {"valid": self.active and k.valid(now)} for k in self.keys]}


@dataclass(frozen=True)
class Registry:
    instance: str
    consumers: tuple[Consumer, ...] = ()

    def get(self, name: str) -> Consumer | None:
        return next((c for c in self.consumers if c.name == name), None)

    def put(self, consumer: Consumer) -> Registry:
        rest = tuple(c for c in self.consumers if c.name != consumer.name)
        return replace(self, consumers=tuple(sorted((*rest, consumer), key=lambda c: c.name)))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REGISTRY_SCHEMA, "instance": self.instance,
                "consumers": [c.to_dict() for c in self.consumers]}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> Registry:
        def bad(why: str) -> CheckFailed:
            return CheckFailed(f"{where}: {why}", code="consumers.bad_registry",
                               hint="restore consumers.json from a backup; the audit log lists every change")

        if not isinstance(doc, dict) or doc.get("schema") != REGISTRY_SCHEMA or not isinstance(doc.get("consumers"), list):
            raise bad(f"not a {REGISTRY_SCHEMA} record")
        out = []
        for c in doc["consumers"]:
            try:
                lim = Limits(**c["limits"])
                keys = tuple(KeyRecord(k["fingerprint"], _time(k["created"], where) or _now(),
                                       _time(k.get("expires"), where)) for k in c["keys"])
                out.append(Consumer(check_consumer_name(c["name"]), _time(c["created"], where) or _now(), lim, keys,
                                    _time(c.get("rotated"), where), _time(c.get("revoked"), where)))
            except (KeyError, TypeError, UsageError) as exc:
                raise bad(f"a consumer entry is malformed ({exc})") from None
        return cls(str(doc.get("instance", "")), tuple(out))


@dataclass(frozen=True)
class ConsumerChange:
    """What a consumers command did. `key`: the new key, shown once (None when it went to --out)."""

    action: str
    consumer: Consumer
    reload: str
    key: str | None = field(default=None, repr=False)
    key_file: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action, "consumer": self.consumer.to_dict(), "reload": self.reload}
        if self.key is not None:
            d["key"] = self.key
        if self.key_file is not None:
            d["key_file"] = str(self.key_file)
        return d


@dataclass(frozen=True)
class ConsumerList:
    consumers: tuple[Consumer, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"consumers": [c.to_dict() for c in self.consumers]}


# ---------------------------------------------------------------- files


def edge_dir(layout: Layout) -> Path:
    return layout.etc / EDGE_DIR


def registry_path(layout: Layout) -> Path:
    return layout.etc / REGISTRY


def _installed(layout: Layout) -> None:
    if not layout.etc.is_dir() or not layout.api_key.is_file():
        raise EnvironmentNotReady(f"instance {layout.instance!r} is not installed here ({layout.api_key} is missing)",
                                  code="consumers.no_instance", hint="install the instance first, or name it with "
                                  "--instance (and --root for a staged tree)")


def read_registry(layout: Layout) -> Registry:
    path = registry_path(layout)
    if not path.exists():
        return Registry(layout.instance)
    return Registry.from_dict(load_json(path, what="consumer registry", code="consumers.bad_registry"), str(path))


def _read_keys(layout: Layout) -> dict[str, tuple[str, str]]:
    """{fingerprint: (consumer, key)} from the root-only key store."""
    path = edge_dir(layout) / KEYS
    if not path.exists():
        return {}
    doc = load_json(path, what="consumer key store", code="consumers.bad_keys")
    if not isinstance(doc, dict) or doc.get("schema") != KEYS_SCHEMA or not isinstance(doc.get("keys"), list):
        raise CheckFailed(f"{path}: not a {KEYS_SCHEMA} record", code="consumers.bad_keys")
    out = {}
    for k in doc["keys"]:
        if not (isinstance(k, dict) and isinstance(k.get("key"), str) and isinstance(k.get("consumer"), str)):
            raise CheckFailed(f"{path}: a key entry is malformed", code="consumers.bad_keys")
        out[fingerprint(k["key"])] = (k["consumer"], k["key"])
    return out


def valid_keys(registry: Registry, store: dict[str, tuple[str, str]], now: datetime) -> list[ConsumerKey]:
    """The keys the router accepts now: a consumer's that is not revoked, and not past a rotation's grace."""
    out = []
    for c in registry.consumers:
        for k in c.keys:
            if c.active and k.valid(now) and k.fingerprint in store:
                out.append(ConsumerKey(c.name, k.fingerprint, store[k.fingerprint][1]))
    return out


def _rendered(layout: Layout, registry: Registry, store: dict[str, tuple[str, str]],
              now: datetime) -> dict[str, str]:
    """The router's consumer files ({name in the edge folder: text}) as the records say they are."""
    http, server = render_consumer_includes(valid_keys(registry, store, now),
                                            {c.name: c.limits for c in registry.consumers if c.active},
                                            upstream_key=read_api_key(layout.api_key))
    return {CONSUMERS_HTTP: http, CONSUMERS_SERVER: server}


def _drifted(layout: Layout, rendered: dict[str, str]) -> list[str]:
    """The consumer files on disk that are not what the records render (changed, or missing, by hand)."""
    d, out = edge_dir(layout), []
    for name, text in rendered.items():
        try:
            same = (d / name).read_bytes() == text.encode()
        except OSError:
            same = False
        if not same:
            out.append(name)
    return out


def _write_all(layout: Layout, registry: Registry, store: dict[str, tuple[str, str]], now: datetime) -> None:
    d = edge_dir(layout)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)  # root only: the router's master reads it as root, its workers never
    keys = valid_keys(registry, store, now)
    kept = {k.fingerprint: store[k.fingerprint] for k in keys}  # a dropped key is gone from disk, too
    atomic_write(d / KEYS, json.dumps({"schema": KEYS_SCHEMA, "keys": [
        {"consumer": c, "fingerprint": fp, "key": key} for fp, (c, key) in sorted(kept.items())]}, indent=1) + "\n",
        0o600)
    for name, text in _rendered(layout, registry, store, now).items():
        atomic_write(d / name, text, 0o600)
    atomic_write(registry_path(layout), json.dumps(registry.to_dict(), indent=1) + "\n", 0o644)


# ---------------------------------------------------------------- changes

Reloader = Callable[[bool], str]  # (cut streams?) -> what was done, in words


def _change(layout: Layout, command: list[str], action: str, name: str,
            edit: Callable[[Registry, dict[str, tuple[str, str]], datetime], tuple[Consumer, str | None]],
            reload: Reloader, *, now_cut: bool = False, out: Path | None = None) -> ConsumerChange:
    check_consumer_name(name)
    _installed(layout)
    if out is not None:
        check_output_path(out, what="key file", force=False)
    checked = audit.require_intact(layout.root)
    with install_lock(layout):
        now = _now()
        registry, store = read_registry(layout), _read_keys(layout)
        consumer, key = edit(registry, store, now)
        registry = registry.put(consumer)
        if key is not None:
            store = {**store, fingerprint(key): (name, key)}
        if out is not None and key is not None:
            atomic_write(out, key + "\n", 0o600, replace_link=False)
        _write_all(layout, registry, store, now)
        fps = ",".join(k.fingerprint for k in consumer.keys)
        audit.record(layout.root, command, "ok", instance=layout.instance, checked=checked,
                     detail=f"consumers {action} {name} (keys sha256:{fps})")
    words = reload(now_cut)
    return ConsumerChange(action, consumer, words, None if out is not None else key, out)


def add_consumer(layout: Layout, name: str, *, limits: Limits, reload: Reloader, command: list[str],
                 out: Path | None = None) -> ConsumerChange:
    def edit(reg: Registry, store: dict[str, tuple[str, str]], now: datetime) -> tuple[Consumer, str | None]:
        old = reg.get(name)
        if old is not None and old.active:
            raise UsageError(f"consumer {name!r} exists", code="consumers.exists",
                             hint=f"rotate its key with 'gptossctl consumers rotate {name}', or pick another name")
        key = new_key()
        return Consumer(name, now, limits, (KeyRecord(fingerprint(key), now),)), key
    return _change(layout, command, "add", name, edit, reload, out=out)


def _existing(reg: Registry, name: str) -> Consumer:
    c = reg.get(name)
    if c is None or not c.active:
        raise UsageError(f"no active consumer {name!r}", code="consumers.unknown",
                         hint="'gptossctl consumers list' shows the consumers")
    return c


def revoke_consumer(layout: Layout, name: str, *, reload: Reloader, command: list[str],
                    now_cut: bool = False) -> ConsumerChange:
    def edit(reg: Registry, store: dict[str, tuple[str, str]], now: datetime) -> tuple[Consumer, str | None]:
        return replace(_existing(reg, name), revoked=now), None
    return _change(layout, command, "revoke", name, edit, reload, now_cut=now_cut)


def rotate_consumer(layout: Layout, name: str, *, grace_s: int, reload: Reloader, command: list[str],
                    out: Path | None = None) -> ConsumerChange:
    def edit(reg: Registry, store: dict[str, tuple[str, str]], now: datetime) -> tuple[Consumer, str | None]:
        c = _existing(reg, name)
        ends = now + timedelta(seconds=grace_s)
        old = tuple(k if k.expires is not None else replace(k, expires=ends) for k in c.keys if k.valid(now))
        key = new_key()
        return replace(c, keys=(*old, KeyRecord(fingerprint(key), now)), rotated=now), key
    return _change(layout, command, "rotate", name, edit, reload, out=out)


def sync_consumers(layout: Layout, *, reload: Reloader, command: list[str]) -> ConsumerList:
    """Render the router's consumer files again from the records: keys past their grace are dropped. Reloads
    (and records an audit entry) only when something changed: a key dropped, or a file on disk that is not what
    the records render (compared before it is rewritten: a key planted by hand, and loaded by a reload, is
    recorded, then gone from the file and, by the reload, from nginx)."""
    _installed(layout)
    checked = audit.require_intact(layout.root)
    with install_lock(layout):
        now = _now()
        registry, store = read_registry(layout), _read_keys(layout)
        before = set(store)
        after = {k.fingerprint for k in valid_keys(registry, store, now)}
        drift = _drifted(layout, _rendered(layout, registry, store, now))
        _write_all(layout, registry, store, now)
        changed = before != after or bool(drift)
        if changed:
            audit.record(layout.root, command, "ok", instance=layout.instance, checked=checked,
                         detail=f"consumers sync: {len(before - after)} expired key(s) dropped"
                         + (f"; {', '.join(drift)} differed from the consumer records (changed outside "
                            "gptossctl): rewritten" if drift else ""))
    if changed:
        reload(False)
    return ConsumerList(registry.consumers)


def list_consumers(layout: Layout) -> ConsumerList:
    _installed(layout)
    return ConsumerList(read_registry(layout).consumers)


def limits_for(layout: Layout, *, rps: int | None, burst: int | None, concurrency: int | None,
               defaults: Limits) -> Limits:
    return Limits(rps=rps if rps is not None else defaults.rps, burst=burst if burst is not None else defaults.burst,
                  concurrency=concurrency if concurrency is not None else defaults.concurrency)


def key_fingerprints(consumers: Sequence[Consumer]) -> list[str]:
    return [k.fingerprint for c in consumers for k in c.keys]


def access_log(layout: Layout) -> Path:
    """The edge's JSON access log (rotated by the distribution's logrotate; listed by support-bundle), in a
    directory of its own: the router's master may write there, never beside the audit log."""
    return edge_log_dir(layout) / f"edge-{layout.instance}.access.jsonl"


def edge_log_dir(layout: Layout) -> Path:
    return layout.log_dir / "edge"


def router_reloader(layout: Layout) -> Reloader:
    """A graceful `systemctl reload` of the instance's router (nginx -s reload: old workers finish what is in
    flight), or with cut=True a restart, which ends every open stream, every consumer's. Under a staged
    --root nothing runs: the files are read at the router's next start."""
    systemd = Systemd(None if not layout.staged else layout.root)

    def reload(cut: bool) -> str:
        if not systemd.live:
            return "staged root: the router reads the files when it starts"
        systemd.systemctl("restart" if cut else "reload", layout.router_unit_name)
        return f"{'restarted' if cut else 'reloaded'} {layout.router_unit_name}"
    return reload


def instance_limits(layout: Layout) -> Limits:
    """Default limits from the installed release's profile (sizing.concurrency, max-num-seqs, replicas)."""
    rec = current_record(layout)
    conc: int | None = None
    seqs: int | None = None
    if rec is not None:
        try:
            prof = next((p for p in load_profiles() if p.name == rec.profile), None)
        except GptossctlError:
            prof = None
        if prof is not None:
            conc = prof.sizing.concurrency
            seqs = int(prof.vllm.flags.get("max-num-seqs", 0)) or None
    return default_limits(sizing_concurrency=conc, max_num_seqs=seqs, replicas=len(rec.replicas) if rec else 1)


def read_usage(log: Path | None, *, root: Path, instance: str | None, since: str | None, by: str,
               fmt: str) -> UsageSummary:
    if by not in BY:
        raise UsageError(f"--by {by!r}: give one of {', '.join(BY)}", code="usage.bad_by")
    if fmt not in ("json", "csv", "prom"):
        raise UsageError(f"--format {fmt!r}: give json, csv or prom", code="usage.bad_format")
    start = _now() - timedelta(seconds=parse_duration(since)) if since else None
    if log is None:
        log = access_log(Layout(root, pick_instance(root, instance)))
    lines: list[str] = []
    for path in [log, *rotated_logs(log)]:  # logrotate's log.1, log.2.gz, ...: --since 7d spans them
        data = read_bytes(path, what="access log", code="usage.no_log", limit=1 << 34)
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise UsageError(f"rotated access log {path} is not gzip ({exc})", code="usage.bad_log",
                                 hint="move the damaged file out of the log directory and run usage again") from None
        lines += data.decode(errors="replace").splitlines()
    return summarise(lines, by=by, since=start)


def rotated_logs(log: Path) -> list[Path]:
    return sorted(p for p in log.parent.glob(log.name + ".*")
                  if re.fullmatch(re.escape(log.name) + r"\.[0-9]+(\.gz)?", p.name))
