"""What an instance trusts and the key that guards it: the records of the running release.

Trust is one signed document, /etc/gptoss/<instance>/trust-root.json (gptossctl/bundle/trustroot.py). The
first install creates it (version 1 from --trust/--threshold, or a signed --trust-root file); later installs,
rollbacks and the compliance check read trust only from it, and `trust rotate` alone replaces it (signed by
the current root's release threshold and the new one's). An instance installed before trust roots keeps its
policy.json and the *.pub files it lists (only those) until its next successful install migrates them.
The API key is generated once per instance and kept across upgrades and rollbacks. Both are written only by
`commit_state`, once an install has succeeded: a refused or rolled-back install leaves them exactly as they
were.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gptossctl.adapters.openai_http import read_api_key
from gptossctl.bundle.keys import PublicKey, load_public_key
from gptossctl.bundle.trustroot import (
    SignedRoot,
    TrustRoot,
    new_root,
    read_root,
    signer_name,
    unsigned,
    verify_rotation,
    verify_self,
)
from gptossctl.bundle.verify import TrustPolicy
from gptossctl.errors import CheckFailed, Finding, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, load_json
from gptossctl.install import audit
from gptossctl.install.layout import Layout, check_instance, install_lock
from gptossctl.install.release import ENV_FILE, replica_files

FIRST_ROOT_LIFETIME = timedelta(days=365)  # a root made from --trust at first install; `trust rotate` renews it
ROTATE_HINT = "make a new root ('gptossctl trust new'), have it signed, and install it with 'gptossctl trust rotate'"


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

def commit_state(layout: Layout, api_key: str, trust: TrustPlan | None = None) -> None:
    """The records of the running release, written only once the release is proven and current."""
    layout.etc.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.etc, 0o700)
    if current_api_key(layout) != api_key:
        atomic_write(layout.api_key, api_key + "\n", 0o600)
    os.chmod(layout.api_key, 0o600)  # converge: a loosened mode is put back on every successful install
    if trust is not None and trust.change is not None:
        save_root(layout, trust.root)
        if layout.trust_dir.is_dir() and not layout.trust_dir.is_symlink():
            shutil.rmtree(layout.trust_dir)  # migrated: a *.pub dropped there later must not look trusted


def save_root(layout: Layout, signed: SignedRoot) -> None:
    """One atomic rename: a crash leaves the old root or the new one, never half of either."""
    layout.etc.mkdir(parents=True, exist_ok=True)
    atomic_write(layout.trust_root, signed.to_json(), 0o644)


def load_root(layout: Layout) -> SignedRoot | None:
    """The instance's current root, or None when it has none (not installed, or installed before roots)."""
    if not layout.trust_root.exists() and not layout.trust_root.is_symlink():
        return None
    return read_root(layout.trust_root)


def load_legacy(layout: Layout) -> TrustRoot | None:
    """The trust an older gptossctl recorded, as root version 1: policy.json's threshold and ONLY the keys it
    lists (a *.pub that policy.json does not name grants nothing); revoked keys are left out."""
    path = layout.trust_dir / "policy.json"
    if not path.exists():
        return None
    hint = "reinstall the bundle with the approved keys (gptossctl install BUNDLE --trust KEY.pub)"
    doc = load_json(path, what="recorded trust policy", code="install.trust_unreadable")
    threshold, revoked, listed = doc.get("threshold", 1), doc.get("revoked", []), doc.get("keys")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not isinstance(revoked, list) \
            or not all(isinstance(r, str) for r in revoked) or not isinstance(listed, list) \
            or not all(isinstance(k, str) and len(k) == 64 for k in listed):
        raise UsageError(f"{path} has wrong types (threshold a number, keys and revoked lists of key ids)",
                         code="install.trust_unreadable", hint=hint)
    keys = []
    for keyid in sorted(set(listed) - set(revoked)):
        key = load_public_key(layout.trust_dir / f"{keyid}.pub")
        if key.keyid != keyid:
            raise UsageError(f"{layout.trust_dir / f'{keyid}.pub'} holds key {key.keyid[:16]}, not {keyid[:16]}",
                             code="install.trust_unreadable", hint=hint)
        keys.append((f"legacy-{keyid[:12]}", key))
    if not keys or not 1 <= threshold <= len(keys):
        raise UsageError(f"{path}: threshold {threshold} with {len(keys)} usable listed key(s)",
                         code="install.trust_unreadable", hint=hint)
    return new_root(keys, threshold, expires=datetime.now(UTC) + FIRST_ROOT_LIFETIME)


@dataclass(frozen=True)
class TrustPlan:
    """The trust an install verifies against, and the root the instance holds once it succeeds."""

    policy: TrustPolicy
    root: SignedRoot
    before: TrustRoot | None  # the root on disk before this install (None: a first root or a migration)
    change: str | None = None  # None: the root stays as it is; else how it was set (for the audit log)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.root.root.version, "digest": self.root.root.digest, "changed": self.change,
                "release_signers": self.root.root.names(self.root.root.roles["release"].keyids),
                "threshold": self.root.root.roles["release"].threshold}

    def audit_detail(self) -> str:
        """Before and after: versions, digests, signer names."""
        after = self.root.root
        was = (f"root v{self.before.version} {self.before.digest[:16]}" if self.before else "no root")
        return (f"{self.change}: {was} -> root v{after.version} {after.digest[:16]}, release signers "
                f"{', '.join(after.names(after.roles['release'].keyids))} (threshold "
                f"{after.roles['release'].threshold}), expires {after.to_doc()['expires']}")


def _differs(current: TrustRoot, asked: str) -> UsageError:
    return UsageError(f"{asked} differs from the instance's trust root (version {current.version}: release signers "
                       f"{', '.join(current.names(current.roles['release'].keyids))}, threshold "
                       f"{current.roles['release'].threshold})", code="trust.differs_from_root",
                       hint="trust changes only by rotation: " + ROTATE_HINT + "; or drop --trust/--threshold to "
                            "install against the current root")


def _check_asked(current: TrustRoot, policy: TrustPolicy | None, root_file: SignedRoot | None, *,
                 legacy: bool = False) -> None:
    """A later install may repeat the trust it has (a no-op), never change it. An older install's trust has no
    document to compare digests with: a --trust-root migrating it must name the same release keys and threshold."""
    release = root_file.root.roles["release"] if root_file is not None else None
    if root_file is not None and release is not None and (
            not current.same_release_trust(release.keyids, release.threshold) if legacy
            else root_file.root.digest != current.digest):
        raise _differs(current, "--trust-root")
    if policy is not None and not current.same_release_trust(
            (k.keyid for k in policy.trusted if k.keyid not in policy.revoked), policy.threshold):
        raise _differs(current, "--trust/--threshold")


def _named(policy: TrustPolicy) -> list[tuple[str, PublicKey]]:
    """--trust keys, named after their files (alice.pub -> alice); revoked ones left out."""
    return [(signer_name(Path(k.source)), k) for k in policy.trusted if k.keyid not in policy.revoked]


def plan_trust(layout: Layout, *, policy: TrustPolicy | None, root_file: Path | None,
               now: datetime | None = None) -> TrustPlan:
    """Which trust this install verifies against: the current root (the flags may only repeat it); an older
    install's trust, migrated; or, on a first install, a root from --trust or from a signed --trust-root."""
    if policy is not None and root_file is not None:
        raise UsageError("give --trust (with --threshold) or --trust-root, not both", code="trust.both_given",
                         hint="a signed root file already names the keys and thresholds")
    given = verify_self(read_root(root_file)) if root_file is not None else None
    kw = {"clock_skew": policy.clock_skew, "min_version": policy.min_version} if policy else {}
    current = load_root(layout)
    if current is not None:
        if current.root.expired(now):
            raise CheckFailed(f"the trust root of {layout.instance} (version {current.root.version}) expired at "
                              f"{current.root.to_doc()['expires']}: installs and upgrades are refused",
                              code="trust.root_expired", hint=ROTATE_HINT + " (the running service is not touched)")
        _check_asked(current.root, policy, given)
        return TrustPlan(current.root.policy("release", **kw), current, current.root)
    legacy = load_legacy(layout)
    if legacy is not None:
        _check_asked(legacy, policy, given, legacy=True)
        if given is not None:
            legacy = given.root
        elif policy is not None:  # the same keys: named after their files rather than their ids
            legacy = new_root(_named(policy), policy.threshold, expires=legacy.expires)
        return TrustPlan(legacy.policy("release", **kw), given or unsigned(legacy), None,
                         f"migrated {layout.trust_dir} (policy.json and the keys it lists) into a trust root")
    if given is not None:
        if given.root.expired(now):
            raise CheckFailed(f"--trust-root {root_file} expired at {given.root.to_doc()['expires']}",
                              code="trust.root_expired", hint="make and sign a fresh root ('gptossctl trust new')")
        _refuse_weaker_than_host(layout, given.root)
        return TrustPlan(given.root.policy("release"), given, None, f"first root from --trust-root {root_file}")
    if policy is None:
        raise UsageError("no trusted keys given: a first install needs --trust KEY.pub (with --threshold) or "
                         "--trust-root ROOT.json", code="verify.no_trusted_keys",
                         hint="pass the signer's public key with --trust FILE.pub")
    named = _named(policy)
    root = new_root(named, policy.threshold, expires=(now or datetime.now(UTC)) + FIRST_ROOT_LIFETIME)
    _refuse_weaker_than_host(layout, root)
    return TrustPlan(root.policy("release", **kw), unsigned(root), None,
                     f"first root from --trust {', '.join(n for n, _ in named)}")


def weaker_than_host(layout: Layout, root: TrustRoot) -> list[str]:
    """Why `root` would let fewer or other signers approve what runs on this host than another instance's root
    does (empty: it does not). One host serves one site's signers: a new instance may not open a second door
    with its own keys or a lower threshold (one key holder installing their own model under their own trust)."""
    problems = []
    mine = root.roles["release"]
    for other in Layout(layout.root).instances():
        if other == layout.instance:
            continue
        theirs = load_root(Layout(layout.root, other))
        if theirs is None:
            continue
        role = theirs.root.roles["release"]
        foreign = sorted(set(mine.keyids) - set(role.keyids))
        if foreign or mine.threshold < role.threshold:
            problems.append(f"instance {other} requires {role.threshold} of {', '.join(theirs.root.names(role.keyids))}; "
                            f"this root accepts {mine.threshold} of {', '.join(root.names(mine.keyids))}"
                            + (f" (keys {', '.join(k[:16] for k in foreign)} are not among {other}'s signers)"
                               if foreign else ""))
    return problems


def _refuse_weaker_than_host(layout: Layout, root: TrustRoot) -> None:
    problems = weaker_than_host(layout, root)
    if problems:
        raise UsageError(f"the first trust root of {layout.instance} is weaker than this host's: " + "; ".join(problems),
                         code="trust.weaker_than_host",
                         hint="install with the site's signers and threshold (gptossctl trust show --instance OTHER "
                              "lists them; --trust-root with the same root), or rotate the existing roots first")


def current_trust(layout: Layout) -> tuple[TrustRoot | None, str]:
    """The trust to check the running release against, and a note saying where it came from (rollback and
    compliance): the root; an older install's listed keys (not yet migrated); or None."""
    current = load_root(layout)
    if current is not None:
        return current.root, f"trust root version {current.root.version} (sha256 {current.root.digest})"
    legacy = load_legacy(layout)
    if legacy is not None:
        return legacy, "legacy trust (policy.json and the keys it lists): no trust root yet"
    return None, "no trust root"


@dataclass(frozen=True)
class Rotated:
    instance: str
    before: dict[str, Any]
    after: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "before": self.before, "after": self.after}


def rotate(root: Path, instance: str, path: Path) -> Rotated:
    """Replace the instance's root with the signed file at `path`, if the current root's release threshold and
    the new root's own sign it and its version is the next one; atomically, audited (refusals too)."""
    layout = Layout(root, check_instance(instance))
    command = ["trust", "rotate", str(path), f"--instance={instance}"]
    try:
        checked = audit.require_intact(root)  # no trust change that its audit entry could not record
        with install_lock(layout):
            current = load_root(layout)
            if current is None:
                raise CheckFailed(f"instance {instance} has no trust root to rotate", code="trust.no_root",
                                  hint="install it first (gptossctl install BUNDLE --trust KEY.pub); an instance "
                                       "installed by an older gptossctl gets its root at its next install")
            new = verify_rotation(current.root, read_root(path))
            save_root(layout, new)
    except GptossctlError as exc:
        audit.record(root, command, f"failed: {exc.code}", instance=instance, detail=exc.message, failure=exc)
        raise
    plan = TrustPlan(new.root.policy(), new, current.root, "rotated")
    audit.record(root, command, "ok", instance=instance, digest=new.root.digest,
                 detail=plan.audit_detail() + f"; signed by {', '.join(new.root.names(new.signer_keyids()))}",
                 checked=checked)
    return Rotated(instance, current.root.summary(), new.root.summary())


@dataclass(frozen=True)
class TrustView:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


def show(root: Path, instance: str | None, file: Path | None) -> TrustView:
    """A root (the instance's, or a file) as people read it: signer names, roles, thresholds, expiry, digest."""
    if file is not None:
        signed = read_root(file)
        return TrustView({"source": str(file), **signed.root.summary(),
                          "signed_by": signed.root.names(signed.signer_keyids()), "expired": signed.root.expired()})
    layout = Layout(root, check_instance(instance or ""))
    signed_or_none = load_root(layout)
    if signed_or_none is None:
        finding = [Finding("trust.legacy", str(layout.trust_dir), "installed by an older gptossctl: reinstall to "
                           "migrate")] if load_legacy(layout) else []
        raise CheckFailed(f"instance {instance} has no trust root", code="trust.no_root", findings=finding,
                          hint="install it (gptossctl install BUNDLE --trust KEY.pub): the first install creates it")
    signed = signed_or_none
    return TrustView({"source": str(layout.live_path(layout.trust_root)), **signed.root.summary(),
                      "signed_by": signed.root.names(signed.signer_keyids()), "expired": signed.root.expired()})
