"""The rollout's k-of-n gate on a real host: nothing from a bundle runs as root before enough keys signed it.

One booted Debian container with sshd in its own network namespace (tests/integration/container.py
`fleet`), reached by a real `ansible-playbook ansible/rollout.yml` over SSH. The bundle carries a tiny
model and only the gptossctl wheelhouse (this checkout's wheel, its locked dependencies and uv): no vLLM.
It is signed by alice alone; the rollout trusts {alice, bob} with gptoss_threshold=2. The play must stop
at the OpenSSL check (bootstrap-verify.sh), before the bootstrap that runs the bundle's uv and gptossctl as
root: no /usr/local/bin/uv, no /opt/gptossctl, no gptossctl process on the host afterwards.
Needs root, systemd-nspawn and debootstrap (the rootfs is debootstrapped once and cached). About 2 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from tests.conftest import KeyPair
from tests.integration.container import REPO, fleet, gptossctl_wheelhouse

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
BIN = Path(sys.executable).parent
GATE = "Check the signatures (k of n) and the wheels before bootstrapping from them (OpenSSL, sha256sum)"
RECIPE = """schema: gptossctl.bundle-spec/1
name: kofn
description: a tiny model and the gptossctl wheelhouse, signed by one key of two
expires_in: 30d
model:
  name: gptossctl/tiny-gpt-oss
  repo: gptossctl/tiny-gpt-oss
  revision: test
wheels:
  dir: {wheels}
profiles: [cpu-tiny]
units: [gptoss@.service]
"""


def test_a_bundle_below_the_threshold_never_runs_on_the_host(tmp_path: Path, tiny_model: Path,
                                                              keys: dict[str, KeyPair]) -> None:
    house = gptossctl_wheelhouse()
    assert list(house.glob("uv-*.whl")) and list(house.glob("gptossctl-*.whl"))
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(wheels=house))
    spec, spec_dir = load_spec(tmp_path / "recipe.yaml")
    bundle = tmp_path / "bundles" / "kofn"
    pack_bundle(spec, spec_dir, bundle, [keys["alice"].signer()], model_dir=tiny_model, version=7)
    shutil.rmtree(house, ignore_errors=True)  # a hard-linked copy made for this run (demo_wheels.py)
    trust = tmp_path / "keys"
    trust.mkdir()
    for name in ("alice", "bob"):
        shutil.copy(keys[name].public, trust / f"{name}.pub")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kofn-test", "-f", str(tmp_path / "id")],
                   check=True)

    with fleet(tmp_path, 1, public_key=tmp_path / "id.pub", binds={tmp_path / "bundles": "/media/bundles"}) as hosts:
        (h,) = hosts
        inventory = {"gptoss": {"hosts": {h.name: {"ansible_host": h.address}}, "vars": {
            "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(tmp_path / "id"),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "gptoss_become": False}}}
        (tmp_path / "inventory.json").write_text(json.dumps(inventory))
        (tmp_path / "vars.json").write_text(json.dumps({
            "gptoss_bundle_transfer": "staged", "gptoss_bundle_staged_path": "/media/bundles/kofn",
            "gptoss_trust": [str(trust / "alice.pub"), str(trust / "bob.pub")], "gptoss_threshold": 2,
            "gptoss_instance": "tiny", "gptoss_reports_dir": str(tmp_path / "reports")}))
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "PATH": f"{BIN}:{os.environ['PATH']}"}
        res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.json"), "rollout.yml",
                              "-e", f"@{tmp_path / 'vars.json'}"], cwd=REPO / "ansible", env=env, capture_output=True,
                             text=True, timeout=600, check=False)
        out = res.stdout + res.stderr
        (tmp_path / "rollout.log").write_text(out)

        # The play reached the host (the keys were put there) and failed.
        assert res.returncode != 0, out[-6000:]
        assert h.container.path("/etc/gptoss-rollout/trust/bob.pub").is_file(), out[-6000:]
        # Nothing from the bundle ran: no uv unpacked from it, no gptossctl installed from it or running,
        # and the gptossctl verification step never answered.
        assert not h.container.path("/usr/local/bin/uv").exists(), out[-6000:]
        assert not h.container.path("/opt/gptossctl").exists(), out[-6000:]
        assert h.container.pids_of("gptossctl") == []
        assert not (tmp_path / "reports" / h.name / "bundle-verify.json").exists()
        # It stopped at the OpenSSL gate, saying why.
        assert f"'{GATE}' failed" in out, out[-6000:]
        assert "FAIL: 1 of the given keys signed, 2 required" in out, out[-6000:]
        assert f"signed by key {keys['alice'].keyid} (alice.pub)" in out
        assert f"no signature by key {keys['bob'].keyid} (bob.pub)" in out
