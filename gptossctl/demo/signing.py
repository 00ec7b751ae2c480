"""The connected side of the demo, shared by both paths: two encrypted Ed25519 keys, a bundle packed from a
recipe and signed by one, co-signed by the other, verified 2-of-2, and one flipped bit refused."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from gptossctl.bundle.keys import PublicKey, SigningKey, generate_key, load_public_key, load_signing_key
from gptossctl.bundle.sign import cosign_bundle
from gptossctl.bundle.verify import TrustPolicy, VerifiedBundle, verify_bundle
from gptossctl.errors import CheckFailed
from gptossctl.install.steps import Steps
from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec

SIGNERS = ("ml-engineer", "security-officer")


@dataclass(frozen=True)
class DemoKeys:
    signers: dict[str, SigningKey]
    public_files: dict[str, Path]
    trusted: tuple[PublicKey, ...]

    @property
    def policy(self) -> TrustPolicy:
        return TrustPolicy(self.trusted, threshold=2)


def make_keys(out: Path, steps: Steps) -> DemoKeys:
    # A passphrase that lives only in this process: the demo's keys are encrypted like real ones.
    passphrase = secrets.token_urlsafe(24).encode()
    signers, public = {}, {}
    for who in SIGNERS:
        with steps(f"keys generate {who}", f"Ed25519 key for the {who}, encrypted, 0600") as d:
            g = generate_key(out / "keys", who, passphrase=passphrase)
            mode = oct(g.private_path.stat().st_mode & 0o777)
            if mode != "0o600":
                raise CheckFailed(f"{g.private_path} has mode {mode}", code="demo.key_mode")
            signers[who] = load_signing_key(g.private_path, passphrase=lambda _p: passphrase)
            public[who] = g.public_path
            d.append(f"key id {g.keyid[:16]}..., private key mode {mode}")
    return DemoKeys(signers, public, tuple(load_public_key(p) for p in public.values()))


def pack(recipe: Path, out: Path, keys: DemoKeys, steps: Steps, *, model: Path | None = None,
         wheelhouse: Path | None = None, version: int | None = None, name: str = "bundle pack") -> Path:
    with steps(name, f"packing {recipe.name} into {out}") as d:
        spec, spec_dir = load_spec(recipe)
        packed = pack_bundle(spec, spec_dir, out, [keys.signers[SIGNERS[0]]], model_dir=model, wheelhouse=wheelhouse,
                             version=version)
        skipped = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()
                         and not (out / "payload" / "model" / p.relative_to(model)).exists()) if model else []
        d.append(f"{len(packed.manifest.files)} files, {packed.manifest.total_size / 2**20:.1f} MiB, version "
                 f"{packed.manifest.version}" + (f"; left out {', '.join(skipped)}" if skipped else ""))
    return out


def cosign_and_verify(bundle: Path, keys: DemoKeys, steps: Steps) -> VerifiedBundle:
    with steps("bundle sign", f"co-signing as the {SIGNERS[1]}") as d:
        signed = cosign_bundle(bundle, keys.signers[SIGNERS[1]])
        d.append(f"co-signed: {len(signed.signers)} signatures")
    with steps("bundle verify (2 of 2)", "verifying signatures and every byte") as d:
        verified = verify_bundle(bundle, keys.policy)
        d.append(f"{verified.bytes_hashed / 2**20:.1f} MiB hashed, both signers trusted")
    return verified


def tamper_refused(bundle: Path, keys: DemoKeys, work: Path, steps: Steps) -> None:
    """A copy with one bit flipped in the middle of the weights must be refused, naming the file. The copy is
    hard-linked (a bundle can hold gigabytes of wheels); the changed file is written anew, the original intact."""
    with steps("tampered bundle refused", "flipping one bit of the weights in a copy") as d:
        tampered = work / "bundle-tampered"
        shutil.copytree(bundle, tampered, copy_function=os.link)
        weights = max((tampered / "payload" / "model").glob("*.safetensors"), key=lambda p: p.stat().st_size)
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.unlink()  # break the link first
        weights.write_bytes(bytes(data))
        try:
            verify_bundle(tampered, keys.policy)
        except CheckFailed as exc:
            codes = sorted({f.code for f in exc.findings})
            if codes != ["bundle.digest_mismatch"]:
                raise CheckFailed(f"refused, but for {codes}", code="demo.tamper") from None
            d.append(f"exit 1 with {', '.join(codes)} on {weights.name}")
        else:
            raise CheckFailed("a flipped bit was NOT detected", code="demo.tamper")
        finally:
            shutil.rmtree(tampered, ignore_errors=True)
