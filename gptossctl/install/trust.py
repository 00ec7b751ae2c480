"""What an instance trusts and the key that guards it: the records of the running release.

The public keys and threshold a release was verified with are kept in /etc/gptoss/<instance>/trust, so the
daily compliance check verifies the installed manifest against the same trust. The API key is generated once
per instance and kept across upgrades and rollbacks. Both are written only by `commit_state`, once an install
has succeeded: a refused or rolled-back install leaves them exactly as they were.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from gptossctl.adapters.openai_http import read_api_key
from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.verify import TrustPolicy
from gptossctl.errors import UsageError
from gptossctl.fsutil import atomic_write, load_json
from gptossctl.install.layout import Layout
from gptossctl.install.release import ENV_FILE, replica_files


def current_api_key(layout: Layout) -> str | None:
    """The instance's committed API key, or None before its first successful install."""
    return read_api_key(layout.api_key) if layout.api_key.is_file() else None

def release_api_key(release: Path) -> str | None:
    """The key a release's service.env was rendered with (a release left by an earlier, failed attempt); with
    several replicas, the first replica's (they all hold the same)."""
    try:
        env = release / ENV_FILE
        text = (env if env.exists() else release / replica_files(0)[1]).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith("VLLM_API_KEY="):
            return line.split("=", 1)[1].strip() or None
    return None

def choose_api_key(layout: Layout, release: Path) -> str:
    """Generated once per instance and kept across upgrades and rollbacks; written to /etc/gptoss (0600 root)
    only when an install succeeds (`commit_state`), so a refused first install leaves no key behind."""
    return current_api_key(layout) or release_api_key(release) or secrets.token_urlsafe(32)

def commit_state(layout: Layout, api_key: str, policy: TrustPolicy) -> None:
    """The records of the running release, written only once the release is proven and current."""
    layout.etc.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.etc, 0o700)
    if current_api_key(layout) != api_key:
        atomic_write(layout.api_key, api_key + "\n", 0o600)
    os.chmod(layout.api_key, 0o600)  # converge: a loosened mode is put back on every successful install
    save_trust(layout, policy)

def save_trust(layout: Layout, policy: TrustPolicy) -> None:
    """Keep the keys this release was verified with, so the daily compliance check verifies the installed
    manifest against the same trust (an auditor can still pass their own with --trust)."""
    from cryptography.hazmat.primitives import serialization  # heavy: only when trust is written

    # Built beside the old set and swapped in with one rename: a crash leaves the old trust or the new one.
    new = layout.etc / ".trust.new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    for k in policy.trusted:
        pem = k.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        atomic_write(new / f"{k.keyid}.pub", pem.decode(), 0o644)
    atomic_write(new / "policy.json", json.dumps({"threshold": policy.threshold, "revoked": sorted(policy.revoked),
                                                  "keys": sorted(k.keyid for k in policy.trusted)}) + "\n", 0o644)
    old = layout.etc / ".trust.old"
    shutil.rmtree(old, ignore_errors=True)
    if layout.trust_dir.exists():
        os.rename(layout.trust_dir, old)
    os.rename(new, layout.trust_dir)
    shutil.rmtree(old, ignore_errors=True)

def load_trust(layout: Layout) -> TrustPolicy | None:
    """The trust recorded at install, or None when there is none (an install by an older gptossctl)."""
    path = layout.trust_dir / "policy.json"
    if not path.exists():
        return None
    doc = load_json(path, what="recorded trust policy", code="install.trust_unreadable")
    threshold, revoked = doc.get("threshold", 1), doc.get("revoked", [])
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not isinstance(revoked, list) \
            or not all(isinstance(r, str) for r in revoked):
        raise UsageError(f"{path} has wrong types (threshold must be a number, revoked a list of key ids)",
                         code="install.trust_unreadable",
                         hint="reinstall the bundle with the approved keys (gptossctl install BUNDLE --trust KEY.pub)")
    keys = tuple(load_public_key(p) for p in sorted(layout.trust_dir.glob("*.pub")))
    return TrustPolicy(keys, threshold=threshold, revoked=frozenset(revoked))
