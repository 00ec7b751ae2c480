"""The one redactor: what leaves the host (support bundles, compliance reports) carries no secret.

Three layers, each run on every text, in this order:
  (a) by value: every secret gptossctl itself knows (each instance's API key, the router's credential, every
      other key or credential file under /etc/gptoss/<instance>/, the key files canary schedules name) is
      removed wherever it appears, also without its name (echoed into a journal, inside a diff);
  (b) by structure: userinfo in URLs (`scheme://user:pass@host`), `Authorization:` headers (Basic, Bearer,
      any case), the value after a secret-looking flag (`--api-key X`, `--token=X`, `--password X`), PEM
      private key blocks, JWTs and provider-shaped keys (`sk-...`, `hf_...`, `ghp_...`, `AKIA...`);
  (c) by name, the last net: the value of any variable named like a secret (secretnames.py).
Every value a layer finds is learned and removed everywhere; `leaks` reads a text back for any learned
value and for any structural secret still standing. A caller says "safe" only when all three layers ran
(`complete`) and the read-back is clean.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gptossctl.compliance.result import CheckResult, ComplianceReport
from gptossctl.compliance.units import applied_dropins
from gptossctl.errors import GptossctlError
from gptossctl.fsutil import read_bytes
from gptossctl.install.layout import Layout
from gptossctl.secretnames import is_secret_name

REDACTED = "[REDACTED]"
LAYERS = ("value", "structure", "name")
COLLECT_LIMIT = 256 << 20  # an audit log of years; anything larger is not what it claims to be
_SECRET_FILE_LIMIT = 1 << 20  # a key, a map of keys, a credential: far below this
_MIN_SECRET = 6  # shorter values would redact ordinary words everywhere; they are caught where they stand

# (c) NAME=value or NAME: value wherever it sits (env files, Environment= lines with several quoted
# assignments, YAML, journal lines), for any variable named like a secret, in any case. PASS as a part of a
# name (DB_PASS), not a word of its own: a report's `"pass": 20` is a count.
_ASSIGNMENT = re.compile(r"(?i)(\b[A-Z0-9_.-]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|BEARER"
                         r"|AUTH(?!OR)|COOKIE|[_.-]PASS(?![A-Z]))[A-Z0-9_.-]*"
                         r"[\"']?\s*[=:]\s*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"']+)")
# Named like a secret but none: a tokenizer, a token count, a key id, a bare `keys:` heading, a file's path.
# (Not "ends in KEY": that let OPENAI_API_KEY and VLLM_API_KEY values go unlearned.)
_NOT_SECRET = re.compile(r"(?i)tokeni[sz]er|max_?\w*tokens|keyid|key_?id|signers|^\W*keys?\W*$|_file$|_path$|_dir$")

# (b) Each pattern: group 1 is kept, group 2 is the secret.
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([^\s/@\"'<>]+)(?=@)")
_AUTH_HEADER = re.compile(r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?\s*(?:(?:basic|bearer|token|digest"
                          r"|negotiate|apikey)\s+)?)([^\s\"',;]+)")
_SCHEME_TOKEN = re.compile(r"(?i)(\b(?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]{6,})")
_SECRET_FLAG = re.compile(r"(?i)((?<![\w-])--?(?:api[-_]?key|token|auth[-_]?token|access[-_]?token|password|passwd"
                          r"|passphrase|secret|client[-_]?secret|hf[-_]?token)(?:=|\s+))(\"[^\"\n]*\"|'[^'\n]*'"
                          r"|[^\s\"']+)")
_JWT = re.compile(r"()(\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)")
_PROVIDER_KEY = re.compile(r"()(\b(?:sk-(?:[A-Za-z0-9]+-)?[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
                           r"|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{16,}|xox[abprs]-[A-Za-z0-9-]{10,}"
                           r"|AKIA[0-9A-Z]{16})\b)")
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END \1-----|\Z)", re.S)
_STRUCTURES = (_URL_USERINFO, _AUTH_HEADER, _SCHEME_TOKEN, _SECRET_FLAG, _JWT, _PROVIDER_KEY)


def _value(raw: str) -> str:
    return raw.strip().strip("\"'")


def _learnable(assignment: str, value: str) -> bool:
    """A value to remove everywhere (and to look for in the read-back): named like a secret, and not a
    tokenizer path, a token count, a key id or a file's path, which are redacted where they stand but are no
    secret."""
    name = assignment.strip().rstrip("=:").strip().strip("\"'")
    return (is_secret_name(name) or re.search(r"(?i)auth(?!or)|cookie", name) is not None) \
        and not _NOT_SECRET.search(name) and not value.startswith("/") and not value.replace(".", "").isdigit()


def read_text(p: Path, limit: int = COLLECT_LIMIT) -> str | None:
    """A file's text, or None: a FIFO or device put where a unit or a key should be is skipped, never read
    (it would block forever)."""
    try:
        return read_bytes(p, what="file", limit=limit).decode("utf-8", "replace")
    except GptossctlError:
        return None


@dataclass
class Redactor:
    secrets: set[str] = field(default_factory=set, repr=False)
    ran: set[str] = field(default_factory=set)  # the layers that ran over the texts (LAYERS)
    gaps: list[str] = field(default_factory=list)  # why layer (a) is incomplete: a secret file it could not read

    @property
    def complete(self) -> bool:
        return set(LAYERS) <= self.ran and not self.gaps

    # ---- (a) by value ---------------------------------------------------------------------------------
    def add_known(self, root: Path) -> None:
        """Every secret gptossctl keeps: each instance's API key, the router's credential (router-key.map) and
        every other file under /etc/gptoss/<instance>/ but the public trust keys (consumer keys, credentials a
        site put there), and the key files the canary schedules name."""
        etc = root / "etc" / "gptoss"
        for inst in sorted(etc.iterdir()) if etc.is_dir() else []:
            if not inst.is_dir() or inst.is_symlink() or inst.name == "canary":
                continue
            for p in sorted(inst.rglob("*")):
                if "trust" in p.relative_to(inst).parts[:1]:
                    continue
                self._secret_file(p)
        for record in sorted((etc / "canary").glob("*.json")) if (etc / "canary").is_dir() else []:
            text = read_text(record, _SECRET_FILE_LIMIT) or ""
            for m in re.finditer(r'"(?:compare_)?api_key_file"\s*:\s*"([^"]+)"', text):
                self._secret_file(root / m.group(1).lstrip("/"))
        self.ran.add("value")

    def _secret_file(self, p: Path) -> None:
        try:
            st = p.lstat()
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        text = read_text(p, _SECRET_FILE_LIMIT)
        if text is None:
            self.gaps.append(f"{p} could not be read: its secrets cannot be searched for")
            return
        if len(text.strip().splitlines()) == 1:
            self.add(text)  # a bare key file
        for line in text.splitlines():
            if line.strip().startswith("#"):
                continue
            for token in re.findall(r"[A-Za-z0-9_\-+/=.~]{20,}", line):
                self.add(token)  # a key inside a map or a credential line
        self.learn(text)

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) >= _MIN_SECRET and REDACTED not in value and "\n" not in value:
            self.secrets.add(value)

    # ---- learning from configuration and outputs ------------------------------------------------------
    def learn_files(self, root: Path, paths: Iterable[Path]) -> None:
        """Configuration (units, drop-ins, environment files and the EnvironmentFile= files units name):
        values of secret-named variables and every structural secret become secrets to remove everywhere."""
        for p in paths:
            body = read_text(p) or ""
            self.learn(body)
            for ref in re.findall(r"(?m)^\s*EnvironmentFile=-?(\S+)", body):
                self.learn(read_text(root / ref.lstrip("/")) or "")

    def learn(self, text: str, *, assignments: bool = True) -> None:
        """Every value this text would have redacted becomes a secret to remove everywhere, and to look for in
        the read-back: the same token echoed without its name (systemd's "Invalid environment assignment,
        ignoring: sk-..." warning) goes too. Structural secrets are learned from any text; NAME=value
        assignments only from configuration (in a command's output, `KeyringMode= Service ...` is no secret)."""
        for m in _ASSIGNMENT.finditer(text) if assignments else ():
            value = _value(m.group(2))
            if _learnable(m.group(1), value):
                self.add(value)
        for pattern in _STRUCTURES:
            for m in pattern.finditer(text):
                secret = _value(m.group(2))
                if pattern is _SCHEME_TOKEN and not _tokenish(secret):
                    continue
                self.add(secret)
                if pattern is _URL_USERINFO and ":" in secret:
                    self.add(secret.split(":", 1)[1])  # the password alone, echoed elsewhere
        for m in _PEM.finditer(text):
            for line in m.group(0).splitlines()[1:-1]:
                self.add(line)

    # ---- redacting and reading back -------------------------------------------------------------------
    def __call__(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):  # (a) and everything learned
            text = text.replace(s, REDACTED)
        text = _PEM.sub(lambda m: f"-----BEGIN {m.group(1)}-----\n{REDACTED}\n-----END {m.group(1)}-----", text)
        for pattern in _STRUCTURES:  # (b)
            text = pattern.sub(_keep_first, text)
        text = _ASSIGNMENT.sub(_by_name, text)  # (c)
        self.ran.update(("structure", "name"))
        return text

    def leaks(self, data: bytes) -> list[str]:
        """What of a read-back is still secret: a learned value (named by its length only), or a structural
        secret still standing. Empty: clean."""
        found = [f"a known secret of {len(s)} characters" for s in self.secrets if s.encode() in data]
        text = data.decode("utf-8", "replace")
        for pattern in _STRUCTURES:
            for m in pattern.finditer(text):
                if pattern is _SCHEME_TOKEN and not _tokenish(m.group(2)):
                    continue
                if REDACTED not in m.group(0) and _value(m.group(2)):
                    found.append(f"a {pattern.pattern[:24]!r}-shaped secret")
        if _PEM.search(text.replace(f"\n{REDACTED}\n", "")) and REDACTED not in text:
            found.append("a PEM private key block")
        return found


_ALREADY = " (redacted)"  # compliance evidence's own marker: "VLLM_API_KEY: approved (redacted), found ..."


def _by_name(m: re.Match[str]) -> str:
    if m.string.startswith(_ALREADY, m.end()):
        return m.group(0)  # a word about a value already withheld, not the value
    return m.group(1) + REDACTED


def _keep_first(m: re.Match[str]) -> str:
    if m.re is _SCHEME_TOKEN and not _tokenish(m.group(2)):
        return m.group(0)  # "bearer tokens" in prose
    return m.group(1) + REDACTED if m.group(2) != REDACTED else m.group(0)


def _tokenish(word: str) -> bool:
    """A word after a bare "Bearer"/"Basic" that looks like a credential, not prose: a digit, a capital
    after the first letter, or a base64/URL-safe symbol in it."""
    return len(word) >= 6 and (any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:])
                               or any(c in "+/=_-.~" for c in word))


def unit_paths(layout: Layout) -> list[Path]:
    """The instance's serving units on disk, whatever release or shape laid them down: each replica's and the
    router's (and a legacy release's one vLLM unit, where it is there)."""
    legacy = [layout.unit_path] if layout.unit_path.exists() or layout.unit_path.is_symlink() else []
    return [*legacy, *(layout.replica_unit_path(k) for k in layout.replica_units()),
            *([layout.router_unit_path] if layout.router_unit_path.exists() else [])]


def unit_dropins(layout: Layout) -> list[Path]:
    """Every drop-in systemd applies to one of the instance's units or its compliance service and timer."""
    names = [p.name for p in unit_paths(layout)] + [layout.compliance_unit, layout.compliance_timer]
    return sorted({d for n in names for d in applied_dropins(layout.root, n)})


def instance_redactor(layout: Layout) -> Redactor:
    """A redactor that knows every secret of the host under the layout's root (a) and learned the instance's
    configuration: its units and their drop-ins, and every environment file of every release."""
    redact = Redactor()
    redact.add_known(layout.root)
    envs = sorted((layout.root / "opt" / "gptoss").glob("*/releases/*/*.env"))
    redact.learn_files(layout.root, [*unit_paths(layout), *unit_dropins(layout), *envs])
    return redact


def redact_report(report: ComplianceReport, redact: Redactor) -> ComplianceReport:
    """The report with every evidence line through the redactor: a unit diff carries Environment= lines, and
    whatever a tamperer put there, verbatim. Applied before any writer (JSON, SARIF, JUnit, stdout) sees it."""
    report.checks = [CheckResult(c.id, c.status, tuple(redact(e) for e in c.evidence), c.locations)
                     for c in report.checks]
    return report
