"""The router's TLS certificate: checked (pure), installed root-only, reloaded gracefully.

`check_certificate` is what compliance and `tls rotate` both run: the certificate matches the key, chains
(through the intermediates in the certificate file) to the site's CA, and is within its validity; within
WARN_DAYS of its end it passes with a warning finding. It never returns a bool: a `CertReport`, or
CheckFailed with every finding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.fsutil import atomic_write, read_bytes
from gptossctl.install import audit
from gptossctl.install.edge import CLIENT_CA, EDGE_DIR, TLS_CA, TLS_CERT, TLS_KEY
from gptossctl.install.layout import Layout, install_lock

WARN_DAYS = 30
MAX_CHAIN = 8
EDGE_SEAL_SCHEMA = "gptossctl.edge-seal/1"  # what `tls rotate` seals in the audit chain (install seals it too)
# The listener's files and the digest the seal keeps of each (of the key: its public half's).
SEALED_FILES = ((TLS_CERT, "cert_sha256"), (TLS_KEY, "key_sha256"), (CLIENT_CA, "client_ca_sha256"),
                (TLS_CA, "chain_ca_sha256"))


@dataclass(frozen=True)
class CertReport:
    subject: str
    not_after: datetime
    chain: tuple[str, ...]
    findings: tuple[Finding, ...] = ()  # warnings only: a failure raises
    installed: str = ""
    reload: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"subject": self.subject, "not_after": self.not_after.isoformat(),
                             "expiry_timestamp": int(self.not_after.timestamp()), "chain": list(self.chain)}
        if self.installed:
            d |= {"installed": self.installed, "reload": self.reload}
        return d

    def prometheus(self, instance: str) -> str:
        return ("# HELP gptoss_tls_cert_expiry_timestamp_seconds When the router's TLS certificate expires.\n"
                "# TYPE gptoss_tls_cert_expiry_timestamp_seconds gauge\n"
                f'gptoss_tls_cert_expiry_timestamp_seconds{{instance="{instance}"}} {int(self.not_after.timestamp())}\n')


def _certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise UsageError(f"the {what} holds no PEM certificate", code="tls.bad_certificate",
                         hint="give a PEM file (-----BEGIN CERTIFICATE-----)")
    for c in certs:
        _pub(c, what)  # a key type or curve this host's cryptography cannot use is refused here, not later
    return certs


def _key(pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"the TLS key is not an unencrypted PEM private key of a supported type ({exc})",
                         code="tls.bad_key",
                         hint="nginx reads the key at start without a passphrase: give an unencrypted PEM key") from None


def _pub(obj: Any, what: str = "certificate") -> bytes:
    try:
        return bytes(obj.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    except (ValueError, UnsupportedAlgorithm) as exc:
        key = what == "TLS key"
        raise UsageError(f"the {what} holds a key this host cannot use ({exc})",
                         code="tls.bad_key" if key else "tls.bad_certificate",
                         hint="use an RSA (2048+), P-256 or P-384 key, or Ed25519") from None


def check_certificate(cert_pem: bytes, key_pem: bytes, ca_pem: bytes | None, *,
                      now: datetime | None = None) -> CertReport:
    """Leaf (+ intermediates) against the key and the CA. Fails on: key mismatch, no chain to the CA, a
    certificate in the chain expired or not yet valid. Warns WARN_DAYS before the leaf expires. `ca_pem` None: no
    site CA was given (install --listen without --client-ca): the chain is not judged, the rest is."""
    now = now or datetime.now(UTC)
    certs = _certs(cert_pem, "certificate file")
    cas = _certs(ca_pem, "CA file") if ca_pem is not None else []
    leaf, pool = certs[0], certs[1:]
    subject = leaf.subject.rfc4514_string()
    findings: list[Finding] = []
    if _pub(leaf) != _pub(_key(key_pem), "TLS key"):
        findings.append(Finding("tls.key_mismatch", subject, "the certificate is not for this private key",
                                "give the key the certificate was issued for"))
    chain, current, trusted = [subject], leaf, False
    for _ in range(MAX_CHAIN):
        roots = chain_certs(current, cas)
        if roots:
            chain.append(roots[0].subject.rfc4514_string() + " (CA)")
            trusted = True
            break
        issuers = chain_certs(current, pool)
        if not issuers:
            break
        current = issuers[0]
        chain.append(current.subject.rfc4514_string())
    if ca_pem is None:
        chain.append("(no site CA given: chain not checked)")
    elif not trusted:
        findings.append(Finding("tls.untrusted_chain", subject,
                                f"no chain to the site CA: nothing given issued {current.subject.rfc4514_string()}",
                                "add the intermediates to the certificate file after the leaf, or give the right --ca"))
    for c in [leaf, *pool]:
        who = c.subject.rfc4514_string()
        if now < c.not_valid_before_utc:
            findings.append(Finding("tls.not_yet_valid", who, f"valid only from {c.not_valid_before_utc.isoformat()}",
                                    "check the host clock, or wait"))
        if now >= c.not_valid_after_utc:
            findings.append(Finding("tls.expired", who, f"expired {c.not_valid_after_utc.isoformat()}",
                                    "renew the certificate and install it: gptossctl tls rotate"))
    if findings:
        raise CheckFailed(f"the TLS certificate {subject} fails its checks", code="tls.check_failed", findings=findings,
                          hint="each finding says what is wrong; nothing was installed")
    warn: tuple[Finding, ...] = ()
    if leaf.not_valid_after_utc - now < timedelta(days=WARN_DAYS):
        warn = (Finding("tls.expires_soon", subject, f"expires {leaf.not_valid_after_utc.isoformat()}, in under "
                        f"{WARN_DAYS} days", "renew it and run gptossctl tls rotate"),)
    return CertReport(subject, leaf.not_valid_after_utc, tuple(chain), warn)


def chain_certs(cert: x509.Certificate, candidates: list[x509.Certificate]) -> list[x509.Certificate]:
    """The candidates that issued `cert` (name and signature)."""
    out = []
    for c in candidates:
        if c.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(c)
        except (ValueError, TypeError, InvalidSignature):
            continue
        except UnsupportedAlgorithm as exc:
            raise UsageError(f"the certificate {cert.subject.rfc4514_string()} is signed with an algorithm this host "
                             f"cannot check ({exc})", code="tls.bad_certificate",
                             hint="have it issued with SHA-256 or stronger by an RSA, P-256/P-384 or Ed25519 CA") from None
        out.append(c)
    return out


def rotate_certificate(layout: Layout, *, cert: Path, key: Path, ca: Path, reload: Callable[[bool], str],
                       command: list[str], textfile: Path | None = None) -> CertReport:
    """Validate, then install (key 0600 root in the 0700 edge directory), record, reload gracefully."""
    from gptossctl.install.consumers import edge_dir

    cert_pem = read_bytes(cert, what="certificate", code="tls.unreadable")
    key_pem = read_bytes(key, what="TLS key", code="tls.unreadable")
    ca_pem = read_bytes(ca, what="CA file", code="tls.unreadable")
    report = check_certificate(cert_pem, key_pem, ca_pem)
    if not layout.etc.is_dir():
        from gptossctl.errors import EnvironmentNotReady

        raise EnvironmentNotReady(f"instance {layout.instance!r} is not installed here", code="tls.no_instance",
                                  hint="install the instance first, or name it with --instance")
    checked = audit.require_intact(layout.root)
    with install_lock(layout):
        d = edge_dir(layout)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        atomic_write(d / TLS_KEY, key_pem, 0o600)  # the key first: a new cert never meets the old key on reload
        atomic_write(d / TLS_CERT, cert_pem, 0o644)
        atomic_write(d / TLS_CA, ca_pem, 0o644)  # what compliance checks the chain against
        # The new digests sealed in the chain: compliance compares the files with the newest seal, never with a
        # record the host alone wrote.
        seal = {"schema": EDGE_SEAL_SCHEMA, "instance": layout.instance, **edge_digests(layout)}
        audit.record(layout.root, command, "ok", instance=layout.instance, checked=checked,
                     detail=f"tls rotate: {report.subject}, expires {report.not_after.isoformat()}",
                     attach={"seal": seal})
    if textfile is not None:
        atomic_write(textfile, report.prometheus(layout.instance), 0o644)
    words = reload(False)
    return CertReport(report.subject, report.not_after, report.chain, report.findings, str(d / TLS_CERT), words)


def installed_files(layout: Layout) -> tuple[bytes, bytes, bytes | None]:
    """(certificate, key, chain CA or None) as the router serves them, for compliance's check."""
    d = layout.etc / EDGE_DIR
    ca = read_bytes(d / TLS_CA, what="CA file", code="tls.unreadable") if (d / TLS_CA).exists() else None
    return (read_bytes(d / TLS_CERT, what="certificate", code="tls.unreadable"),
            read_bytes(d / TLS_KEY, what="TLS key", code="tls.unreadable"), ca)


def edge_digests(layout: Layout) -> dict[str, str | None]:
    """SHA-256 of each of the listener's files as they are now (of the key: its public half; "unusable" for a key
    that cannot be read as one); None for a file that is not there."""
    d, out = layout.etc / EDGE_DIR, {}
    for name, field in SEALED_FILES:
        p = d / name
        try:
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        except OSError:
            data = None
        if data is None or name != TLS_KEY:
            out[field] = hashlib.sha256(data).hexdigest() if data is not None else None
            continue
        try:
            out[field] = public_key_sha256(data)
        except UsageError:
            out[field] = "unusable"
    return out


def edge_differences(layout: Layout, sealed: dict[str, str | None], *, what: str) -> list[Finding]:
    """A finding for each listener file that is missing, added or other than `sealed` says (fields `sealed` lacks
    are not judged: a record written before the chain CA was sealed)."""
    now, d, out = edge_digests(layout), layout.etc / EDGE_DIR, []
    for name, field in SEALED_FILES:
        if field not in sealed or (sealed[field] or None) == now[field]:
            continue
        want, got = sealed[field] or None, now[field]
        why = (f"{name} is missing; {what} has sha256 {want}" if got is None else
               f"{name} is there but {what} has none" if want is None else
               f"{name} differs from {what}: sha256 {got}, sealed {want}")
        out.append(Finding("tls.not_as_sealed", str(layout.live_path(d / name)), why,
                           "put back the file gptossctl installed, or install new ones with gptossctl tls rotate "
                           "(audited); investigate who changed it"))
    return out


def public_key_sha256(key_pem: bytes) -> str:
    """SHA-256 of the DER public key a private key holds: what a record may say of the key."""
    return hashlib.sha256(_pub(_key(key_pem), "TLS key")).hexdigest()
