"""`gptossctl support-bundle`: what a support engineer needs, in one archive, with every secret removed.

Collected: the units and drop-ins, release.json, vllm.yaml, service.env (values of secret-named variables
redacted), the signed manifest, the trust policy, the journal tails, the hardware inventory, the
installed packages, `status`, the compliance report, the audit log and its verification. Every API key
of every instance is removed wherever it appears (a key echoed into the journal too). Before the archive
is kept, it is read back and searched for each secret; if one is found, nothing is written.
"""

from __future__ import annotations

import io
import json
import platform
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.adapters.gpus import probe_live
from gptossctl.adapters.systemd import Systemd
from gptossctl.compliance.checks import run_checks
from gptossctl.compliance.evidence import dropins, installed_dists
from gptossctl.errors import CheckFailed, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, new_output, read_bytes
from gptossctl.install import audit
from gptossctl.install.layout import Layout, check_instance
from gptossctl.install.operations import status
from gptossctl.install.release import CONFIG, ENV_FILE, RELEASE_JSON, ROUTER_CONFIG, current_version
from gptossctl.secretnames import is_secret_name

REDACTED = "[REDACTED]"
# NAME=value or NAME: value wherever it sits (env files, Environment= lines with several quoted assignments,
# YAML, journal lines), for any variable named like a secret, in any case.
# PASS as a part of a name (DB_PASS), not a word of its own: a report's `"pass": 20` is a count.
_ASSIGNMENT = re.compile(r"(?i)(\b[A-Z0-9_.-]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|BEARER"
                         r"|[_.-]PASS(?![A-Z]))[A-Z0-9_.-]*"
                         r"[\"']?\s*[=:]\s*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"']+)")
_BEARER = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)")
COLLECT_LIMIT = 256 << 20  # an audit log of years; anything larger is not what it claims to be
_MIN_SECRET = 6  # shorter values would redact ordinary words everywhere; they are caught by name instead


_NOT_SECRET = re.compile(r"(?i)tokeni[sz]er|max_?\w*tokens|keyid|key_?id|signers|keys?\W*$")


def _learnable(assignment: str, value: str) -> bool:
    """A value to remove everywhere (and to look for in the read-back): named like a secret, and not a
    tokenizer path, a token count or a key id, which are redacted where they stand but are no secret."""
    name = assignment.strip().rstrip("=:").strip().strip("\"'")
    return is_secret_name(name) and not _NOT_SECRET.search(name) and not value.startswith("/") \
        and not value.replace(".", "").isdigit()


@dataclass
class Redactor:
    secrets: set[str] = field(default_factory=set)

    def add_key_files(self, root: Path, units: list[Path]) -> None:
        """Every value that is a secret, wherever gptossctl keeps one or a site may have put one: each instance's
        API key, and the value of every variable named like a secret in the releases' environment files, the
        units and their drop-ins (Environment= lines, quoted or not) and the EnvironmentFile= files they name."""
        for key_file in (root / "etc" / "gptoss").glob("*/api-key"):
            self.add(_text(key_file) or "")
        texts = [_text(p) or "" for p in (root / "opt" / "gptoss").glob("*/releases/*/service.env")]
        for unit in units:
            body = _text(unit) or ""
            texts.append(body)
            for ref in re.findall(r"(?m)^\s*EnvironmentFile=-?(\S+)", body):
                texts.append(_text(root / ref.lstrip("/")) or "")
        for text in texts:
            self.learn(text)

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) >= _MIN_SECRET and REDACTED not in value:
            self.secrets.add(value)

    def learn(self, text: str, *, assignments: bool = True) -> None:
        """Every value this text would have redacted by pattern becomes a secret to remove everywhere, and to
        look for in the read-back: the same token echoed without its name (systemd's "Invalid environment
        assignment, ignoring: sk-..." warning) goes too. Bearer tokens are learned from any text; NAME=value
        assignments only from configuration (in a command's output, `KeyringMode= Service ...` is no secret)."""
        for m in _ASSIGNMENT.finditer(text) if assignments else ():
            value = m.group(2).strip("\"'")
            if _learnable(m.group(1), value):
                self.add(value)
        for m in _BEARER.finditer(text):
            self.add(m.group(2))

    def __call__(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, REDACTED)
        text = _ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)
        return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)

    def leaks(self, data: bytes) -> bool:
        return any(s.encode() in data for s in self.secrets)


@dataclass(frozen=True)
class SupportBundle:
    path: Path
    members: list[str]
    redacted: int  # distinct secrets removed wherever they appeared

    def to_dict(self) -> dict[str, Any]:
        return {"archive": str(self.path), "members": self.members, "secrets_redacted": self.redacted}


def _safe(what: Callable[[], Any]) -> Any:
    """A support bundle collects what it can: a part that fails says why instead of stopping the rest."""
    try:
        return what()
    except GptossctlError as exc:
        return {"error": exc.code, "message": exc.message}
    except Exception as exc:  # noqa: BLE001 - anything: report it inside the archive
        return {"error": type(exc).__name__, "message": str(exc)}


def _text(p: Path) -> str | None:
    """A collected file's text, or None: a FIFO or device put where a unit or the audit log should be is
    skipped, never read (it would block the collection forever)."""
    try:
        return read_bytes(p, what="file", limit=COLLECT_LIMIT).decode("utf-8", "replace")
    except GptossctlError:
        return None


def collect(root: Path, instance: str) -> dict[str, str]:
    """Archive member name -> text, before redaction."""
    layout = Layout(root, check_instance(instance))
    if not layout.opt.is_dir() and not layout.unit_path.exists():
        raise UsageError(f"instance {instance} is not installed under {root}", code="support.not_installed",
                         hint="see 'gptossctl status' for the installed instances")
    systemd = Systemd(None if not layout.staged else layout.root)
    out: dict[str, str] = {}
    out["about.json"] = json.dumps({"gptossctl": __version__, "instance": instance, "root": str(root),
                                    "collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "host": platform.node(), "kernel": platform.release(),
                                    "python": platform.python_version()}, indent=1)
    for p in [*_unit_paths(layout), *(layout.unit_dir / n for n in ("gptoss-compliance@.service",
                                                                      "gptoss-compliance@.timer"))]:
        if (t := _text(p)) is not None:
            out[f"units/{p.name}"] = t
    for p in _dropins(layout):
        out[f"units/dropins/{p.parent.name}/{p.name}"] = _text(p) or ""
    cur = current_version(layout)
    if cur is not None:
        rel = layout.release(cur)
        replicas = sorted(p.name for p in rel.glob("*-r[0-9]*.*") if p.suffix in (".yaml", ".env"))
        for name in (RELEASE_JSON, CONFIG, ENV_FILE, "manifest.json", ROUTER_CONFIG, *replicas):
            if (t := _text(rel / name)) is not None:
                out[f"release/{name}"] = t
        dists = installed_dists(rel / "venv")
        out["release/packages.txt"] = "".join(f"{n}=={v}\n" for n, v in sorted(dists.items())) or \
            "(no environment built from the bundle: --vllm-python)\n"
    if (t := _text(layout.trust_dir / "policy.json")) is not None:
        out["trust/policy.json"] = t
    if (t := _text(layout.trust_root)) is not None:
        out["trust-root.json"] = t  # public keys and signatures only
    out["status.json"] = json.dumps(_safe(lambda: status(root, instance)), indent=1, default=str)
    out["compliance.json"] = json.dumps(_safe(lambda: run_checks(root, instance).to_dict()), indent=1,
                                        default=str)
    out["audit/verify.json"] = json.dumps(_safe(lambda: audit.verify(layout.log_dir, anchor=layout.audit_anchor)
                                                .to_dict()), indent=1)
    if (t := _text(layout.log_dir / audit.LOG)) is not None:
        out["audit/audit.jsonl"] = t
    out["hardware.json"] = json.dumps(_safe(_hardware), indent=1, default=str)
    if systemd.live:
        out["journal/service.txt"] = systemd.journal_tail(layout.unit_name, 500)
        for p in _unit_paths(layout)[1:]:  # with replicas: each one's, and the router's
            out[f"journal/{p.name.removesuffix('.service')}.txt"] = systemd.journal_tail(p.name, 500)
        out["journal/compliance.txt"] = systemd.journal_tail(layout.compliance_unit, 100)
    graded = systemd.security(layout.unit_name)
    if graded is not None:
        out["systemd-analyze-security.txt"] = graded.output
    return out


def _unit_paths(layout: Layout) -> list[Path]:
    """The instance's units: its one vLLM, or (with replicas) each replica's and the router's."""
    return [layout.unit_path, *(layout.replica_unit_path(k) for k in layout.replica_units()),
            *([layout.router_unit_path] if layout.router_unit_path.exists() else [])]


def _dropins(layout: Layout) -> list[Path]:
    return sorted({d for p in _unit_paths(layout) for d in dropins(layout, p.name)})


def _hardware() -> dict[str, Any]:
    return probe_live(gpu_required=False).to_dict()


def write_support_bundle(root: Path, instance: str, output: Path | None = None, *,
                         force: bool = False) -> SupportBundle:
    if output is None:
        output = Path(f"gptoss-support-{instance}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz")
    new_output(output, force=force, what="support bundle")  # refused before anything is collected
    layout = Layout(root, check_instance(instance))
    redact = Redactor()
    redact.add_key_files(root, [*_unit_paths(layout), *_dropins(layout)])
    parts = collect(root, instance)
    for text in parts.values():  # every member, command outputs too, through the one redactor
        redact.learn(text, assignments=False)
    buf = io.BytesIO()
    prefix = output.name.removesuffix(".tar.gz").removesuffix(".tgz")
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in sorted(parts.items()):
            data = redact(text).encode()
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    # Read back what would be handed over: not one secret may be in it, compressed or not.
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        plain = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    if redact.leaks(plain) or redact.leaks(blob):
        raise CheckFailed("a secret survived redaction; no archive was written", code="support.leak",
                          hint="report this as a bug in gptossctl")
    new_output(output, force=force, what="support bundle")  # again: nothing may have appeared meanwhile
    atomic_write(output, blob, 0o600)  # a new file renamed into place: never written through a link
    return SupportBundle(output, sorted(parts), len(redact.secrets))
