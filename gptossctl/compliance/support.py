"""`gptossctl support-bundle`: what a support engineer needs, in one archive, with every secret removed.

Collected: the units and drop-ins, release.json, vllm.yaml, service.env, the signed manifest, the trust
policy, the journal tails, the hardware inventory, the installed packages, `status`, the compliance report,
the audit log and its verification. Every member goes through the one redactor (compliance.redact: by
value, by structure, by name). Before the archive is kept, it is read back and searched for every secret
learned and every structural secret; if one is found, nothing is written. "Safe to send" is said only when
all three layers ran and no secret file was left unread.
"""

from __future__ import annotations

import io
import json
import platform
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.adapters.gpus import probe_live
from gptossctl.adapters.systemd import Systemd
from gptossctl.compliance.checks import run_checks
from gptossctl.compliance.evidence import installed_dists
from gptossctl.compliance.redact import (
    LAYERS,
    REDACTED,
    Redactor,
    instance_redactor,
    read_text,
    unit_dropins,
    unit_paths,
)
from gptossctl.errors import CheckFailed, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, new_output
from gptossctl.install import audit
from gptossctl.install.consumers import access_log, registry_path
from gptossctl.install.layout import Layout, check_instance
from gptossctl.install.operations import status
from gptossctl.install.release import CONFIG, ENV_FILE, RELEASE_JSON, ROUTER_CONFIG, current_version

__all__ = ["REDACTED", "Redactor", "SupportBundle", "collect", "write_support_bundle"]
EDGE_LOG_LINES = 2000  # the newest requests: enough to see a pattern, bounded on a busy edge


@dataclass(frozen=True)
class SupportBundle:
    path: Path
    members: list[str]
    redacted: int  # distinct secrets removed wherever they appeared
    layers: tuple[str, ...] = ()  # the redaction layers that ran over every member (value, structure, name)
    gaps: tuple[str, ...] = ()  # secret files that could not be read: their values were not searched for

    @property
    def safe(self) -> bool:
        """Every layer ran and nothing was left unsearched (the read-back was clean, or nothing was written)."""
        return set(LAYERS) <= set(self.layers) and not self.gaps

    def to_dict(self) -> dict[str, Any]:
        return {"archive": str(self.path), "members": self.members, "secrets_redacted": self.redacted,
                "redaction": {"layers": list(self.layers), "read_back": "clean", "gaps": list(self.gaps),
                              "safe_to_send": self.safe}}


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
    return read_text(p)


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
    out["audit/verify.json"] = json.dumps(_safe(lambda: audit.verify_root(root).to_dict()), indent=1)
    if (t := _text(layout.log_dir / audit.LOG)) is not None:
        out["audit/audit.jsonl"] = t
    out["hardware.json"] = json.dumps(_safe(_hardware), indent=1, default=str)
    # The network edge: who may call (names, limits, fingerprints; no key) and the newest access-log lines
    # (consumer names, never a key; the redactor still searches them for every key it learned).
    if (t := _text(registry_path(layout))) is not None:
        out["edge/consumers.json"] = t
    if (t := _text(access_log(layout))) is not None:
        out["edge/access.jsonl"] = "".join(t.splitlines(keepends=True)[-EDGE_LOG_LINES:])
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
    return unit_paths(layout)


def _dropins(layout: Layout) -> list[Path]:
    return unit_dropins(layout)


def _hardware() -> dict[str, Any]:
    return probe_live(gpu_required=False).to_dict()


def write_support_bundle(root: Path, instance: str, output: Path | None = None, *,
                         force: bool = False) -> SupportBundle:
    if output is None:
        output = Path(f"gptoss-support-{instance}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz")
    new_output(output, force=force, what="support bundle")  # refused before anything is collected
    layout = Layout(root, check_instance(instance))
    redact = instance_redactor(layout)
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
    leaks = redact.leaks(plain) + redact.leaks(blob)
    if leaks or not {"structure", "name"} <= redact.ran:
        raise CheckFailed(f"a secret survived redaction ({'; '.join(sorted(set(leaks))[:3]) or 'a layer did not run'})"
                          "; no archive was written", code="support.leak", hint="report this as a bug in gptossctl")
    new_output(output, force=force, what="support bundle")  # again: nothing may have appeared meanwhile
    atomic_write(output, blob, 0o600)  # a new file renamed into place: never written through a link
    return SupportBundle(output, sorted(parts), len(redact.secrets), tuple(sorted(redact.ran)), tuple(redact.gaps))

