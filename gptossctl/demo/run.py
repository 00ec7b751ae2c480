"""The end-to-end demo on the embedded tiny model: keys -> pack -> co-sign -> verify -> tamper -> refuse
-> hardware check. Every step runs the real code paths with real keys and real files.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptossctl.adapters.systemd import Systemd
from gptossctl.bundle.keys import generate_key, load_public_key, load_signing_key
from gptossctl.bundle.sign import cosign_bundle
from gptossctl.bundle.verify import TrustPolicy, verify_bundle
from gptossctl.compliance.checks import run_checks
from gptossctl.demo.tinymodel import write_tiny_model
from gptossctl.errors import CheckFailed, GptossctlError, UsageError
from gptossctl.install.lifecycle import InstallRequest, install
from gptossctl.install.preflight import assess
from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from gptossctl.resources import data_dir


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class DemoResult:
    out: Path
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "ok": self.ok, "steps": [s.to_dict() for s in self.steps]}


MARKER = ".gptossctl-demo"  # in every directory the demo made: the only kind it will ever replace


def prepare_out(out: Path) -> None:
    """Start from an empty `out`: a directory an earlier demo made is replaced, anything else is refused."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} is not a directory", code="demo.bad_out",
                         hint="give a new directory (or one an earlier demo made) for the demo's files")
    if out.exists():
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise UsageError(f"--out {out} holds files the demo did not make; it replaces only its own directories",
                             code="demo.foreign_out", hint="give a new directory, e.g. --out demo-out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by gptossctl demo: replaced by the next run\n")


def run_demo(out: Path, *, log: Callable[[str], None] = lambda _m: None) -> DemoResult:
    prepare_out(out)
    result = DemoResult(out)

    def step(name: str, ok: bool, detail: str) -> None:
        result.steps.append(Step(name, ok, detail))
        log(f"{'ok ' if ok else 'FAIL'} {name}: {detail}")

    # A passphrase that lives only in this process: the demo keys are encrypted like real ones.
    passphrase = secrets.token_urlsafe(24).encode()
    keys = {}
    for who in ("ml-engineer", "security-officer"):
        generated = generate_key(out / "keys", who, passphrase=passphrase)
        keys[who] = generated
        mode = oct(generated.private_path.stat().st_mode & 0o777)
        step(f"keys generate {who}", mode == "0o600", f"key id {generated.keyid[:16]}…, private key mode {mode}")
    signer = {w: load_signing_key(k.private_path, passphrase=lambda _p: passphrase) for w, k in keys.items()}
    trusted = tuple(load_public_key(k.public_path) for k in keys.values())

    model = write_tiny_model(out / "tiny-gpt-oss")
    step("model", True, f"embedded tiny GptOssForCausalLM written to {model}")

    spec, spec_dir = load_spec(data_dir("bundles") / "tiny-demo.yaml")
    bundle = out / "bundle"
    packed = pack_bundle(spec, spec_dir, bundle, [signer["ml-engineer"]], model_dir=model)
    skipped = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()
                     and not (bundle / "payload" / "model" / p.relative_to(model)).exists())
    step("bundle pack", True, f"{len(packed.manifest.files)} files, {packed.manifest.total_size} bytes, "
         f"left out {', '.join(skipped)}")

    cosigned = cosign_bundle(bundle, signer["security-officer"])
    step("bundle sign", len(cosigned.signers) == 2, f"co-signed: {len(cosigned.signers)} signatures")

    verified = verify_bundle(bundle, TrustPolicy(trusted, threshold=2))
    step("bundle verify (2 of 2)", True, f"{verified.bytes_hashed} bytes hashed, signers ok")

    tampered = out / "bundle-tampered"
    shutil.copytree(bundle, tampered)
    weights = tampered / "payload" / "model" / "model-00000-of-00001.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the weights
    weights.write_bytes(bytes(data))
    try:
        verify_bundle(tampered, TrustPolicy(trusted, threshold=2))
        step("tampered bundle refused", False, "a flipped bit was NOT detected")
    except CheckFailed as exc:
        codes = sorted({f.code for f in exc.findings})
        step("tampered bundle refused", codes == ["bundle.digest_mismatch"], f"exit 1 with {', '.join(codes)}")

    try:
        report = assess(model="tiny", bundle=bundle, disk_paths=[out])
        m = report.models[0]
        step("hw check", m.chosen is not None, m.reason)
    except GptossctlError as exc:
        step("hw check", False, f"{exc.message} ({exc.code})")

    _staged_install(out, bundle, TrustPolicy(trusted, threshold=2), step)
    return result


def _staged_install(out: Path, bundle: Path, policy: Any, step: Callable[[str, bool, str], None]) -> None:
    """Install into a staging tree (no systemd is booted here) and grade the unit it enabled."""
    root = out / "root"
    try:
        r = install(InstallRequest(bundle=bundle, policy=policy, root=root, vllm_python=Path(sys.executable)))
    except GptossctlError as exc:
        step("install (staged)", False, f"{exc.message} ({exc.code})")
        return
    step("install (staged)", r.version is not None and not r.started,
         f"release {r.version} with profile {r.profile} into {root}; {r.unit} enabled with systemctl --root, "
         "API key 0600, vLLM bound to 127.0.0.1")
    graded = Systemd(root).security(r.unit)
    if graded is None:
        step("unit graded", True, "systemd-analyze is not installed here: not graded (the test suite grades it)")
    else:
        step("unit graded", graded.score is not None and graded.score <= 2.0,
             f"systemd-analyze security: exposure {graded.score} {graded.label} (at most 2.0 required)"
             if graded.score is not None else f"systemd-analyze gave no score: {graded.output.strip()[:200]}")
    _compliance(root, r.instance, r.release, step)


def _compliance(root: Path, instance: str, release: Path, step: Callable[[str, bool, str], None]) -> None:
    """The installed tree passes the compliance check; one flipped weight bit is then caught as drift."""
    report = run_checks(root, instance)
    n = report.counts
    warned = "; ".join(f"{c.id}: {c.evidence[-1]}" for c in report.checks if c.status == "warn")
    step("compliance check", report.ok, f"{n['pass']} passed, {n['fail']} failed, {n['warn']} warnings"
         + (f" ({warned})" if warned else ""))
    (weights,) = (release / "payload" / "model").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    failed = [c.id for c in run_checks(root, instance).checks if c.status == "fail"]
    step("drift caught", failed == ["drift.payload"], f"one weight bit flipped after install: "
         f"{', '.join(failed) or 'nothing'} failed")
