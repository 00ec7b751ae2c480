"""The quick path (`gptossctl demo --staged`): the embedded stdlib-only tiny gpt-oss, packed, signed, verified
and installed into a staged tree (`install --root`: the unit rendered and enabled with `systemctl --root`,
nothing started), graded by systemd-analyze, checked for compliance, and one flipped weight bit caught as drift.
No root, no container, no vLLM: seconds."""

from __future__ import annotations

import sys
from pathlib import Path

from gptossctl.adapters.systemd import Systemd
from gptossctl.compliance.checks import run_checks
from gptossctl.demo.signing import DemoKeys, cosign_and_verify, make_keys, pack, tamper_refused
from gptossctl.demo.tinymodel import write_tiny_model
from gptossctl.errors import CheckFailed
from gptossctl.install.lifecycle import InstallRequest, InstallResult, install
from gptossctl.install.preflight import assess
from gptossctl.install.steps import Steps
from gptossctl.resources import data_dir


def run_staged(out: Path, steps: Steps) -> None:
    keys = make_keys(out, steps)
    with steps("write tiny gpt-oss", "writing the embedded tiny GptOssForCausalLM") as d:
        model = write_tiny_model(out / "tiny-gpt-oss")
        d.append(f"embedded tiny GptOssForCausalLM written to {model}")
    bundle = pack(data_dir("bundles") / "tiny-demo.yaml", out / "bundle", keys, steps, model=model)
    cosign_and_verify(bundle, keys, steps)
    tamper_refused(bundle, keys, out, steps)
    hw_check(bundle, out, steps)
    r = staged_install(bundle, keys, out / "root", steps)
    grade(out / "root", r.unit, steps)
    compliance_then_drift(out / "root", r, steps)


def hw_check(bundle: Path, out: Path, steps: Steps) -> None:
    with steps("hw check", "which profile fits this host, and why") as d:
        report = assess(model="tiny", bundle=bundle, disk_paths=[out])
        m = report.models[0]
        if m.chosen is None:
            raise CheckFailed(m.reason, code="demo.hw_check", findings=report.findings)
        d.append(m.reason)


def staged_install(bundle: Path, keys: DemoKeys, root: Path, steps: Steps) -> InstallResult:
    with steps("install (staged)", f"installing into the staged tree {root}") as d:
        r = install(InstallRequest(bundle=bundle, policy=keys.policy, root=root, vllm_python=Path(sys.executable)))
        d.append(f"release {r.version} with profile {r.profile} into {root}; {r.unit} enabled with systemctl --root, "
                 "API key 0600, vLLM bound to 127.0.0.1")
    return r


def grade(root: Path, unit: str, steps: Steps) -> None:
    with steps("unit graded", "systemd-analyze security --offline=true") as d:
        graded = Systemd(root).security(unit)
        if graded is None:
            d.append("systemd-analyze is not installed here: not graded (the test suite grades it)")
            return
        if graded.score is None or graded.score > 2.0:
            raise CheckFailed(f"exposure {graded.score} (at most 2.0 required): {graded.output.strip()[:200]}",
                              code="demo.exposure")
        d.append(f"systemd-analyze security: exposure {graded.score} {graded.label} (at most 2.0 required)")


def compliance_then_drift(root: Path, r: InstallResult, steps: Steps) -> None:
    """The installed tree passes the compliance check; one flipped weight bit is then caught as drift."""
    with steps("compliance check", "every compliance check on the staged tree") as d:
        report = run_checks(root, r.instance)
        n = report.counts
        if not report.ok:
            raise CheckFailed(f"{n['fail']} check(s) failed", code="demo.compliance", findings=report.findings)
        warned = "; ".join(f"{c.id}: {c.evidence[-1]}" for c in report.checks if c.status == "warn")
        d.append(f"{n['pass']} passed, {n['fail']} failed, {n['warn']} warnings" + (f" ({warned})" if warned else ""))
    with steps("drift caught", "flipping one bit of the installed weights") as d:
        (weights,) = (r.release / "payload" / "model").glob("*.safetensors")
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        failed = [c.id for c in run_checks(root, r.instance).checks if c.status == "fail"]
        if failed != ["drift.payload"]:
            raise CheckFailed(f"expected drift.payload alone to fail, got {failed}", code="demo.drift")
        d.append("one weight bit flipped after install: drift.payload failed")
