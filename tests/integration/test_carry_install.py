"""materialize(): the one function install calls for what crossed the gap. Install (staged, the real CLI)
from parts, and from a delta whose base is the installed release; a delta without its base is refused."""

# ruff: noqa: F811 - fixtures imported from carry_bundles come back as test parameters
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.verify import TrustPolicy
from gptossctl.errors import CheckFailed, UsageError
from tests.conftest import KeyPair
from tests.integration.carry_bundles import (  # noqa: F401 - fixtures
    Cli,
    carry_model,
    carry_parts,
    carry_v5,
    carry_v6,
    part_files,
    tree_bytes,
)

pytestmark = pytest.mark.integration


def _policy(keys: dict[str, KeyPair], name: str = "alice") -> TrustPolicy:
    return TrustPolicy((load_public_key(keys[name].public),))


@pytest.fixture(scope="module")
def delta_dir(tmp_path_factory: pytest.TempPathFactory, carry_v5: Path, carry_v6: Path) -> Path:
    from gptossctl.bundle.delta import make_delta

    out = tmp_path_factory.mktemp("inst-delta") / "d"
    make_delta(carry_v5, carry_v6, out)
    return out


def _install(cli: Cli, bundle: Path, keys: dict[str, KeyPair], root: Path) -> tuple[int, dict[str, object]]:
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable, "--yes")


def test_a_bundle_directory_is_returned_as_it_is(carry_v5: Path, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    from gptossctl.bundle.materialize import materialize

    assert materialize(carry_v5, base=None, scratch=tmp_path / "s", policy=_policy(keys)) == carry_v5
    assert not (tmp_path / "s").exists()


def test_install_from_parts_then_from_a_delta_on_the_installed_release(
        cli: Cli, carry_parts: Path, carry_v5: Path, carry_v6: Path, delta_dir: Path, keys: dict[str, KeyPair],
        tmp_path: Path) -> None:
    from gptossctl.bundle.materialize import delta_base, materialize

    scratch = tmp_path / "scratch"
    joined = materialize(carry_parts, base=None, scratch=scratch, policy=_policy(keys))
    assert tree_bytes(joined) == tree_bytes(carry_v5)
    assert materialize(carry_parts, base=None, scratch=scratch, policy=_policy(keys)) == joined  # done once
    root = tmp_path / "root"
    code, doc = _install(cli, joined, keys, root)
    assert code == 0, doc
    (release5,) = root.glob("opt/gptoss/*/releases/5")
    # The delta names its base; the installed release is that base.
    ref = delta_base(delta_dir)
    assert ref is not None and ref.version == 5
    rebuilt = materialize(delta_dir, base=release5, scratch=scratch, policy=_policy(keys))
    assert tree_bytes(rebuilt) == tree_bytes(carry_v6)
    code, doc = _install(cli, rebuilt, keys, root)
    assert code == 0, doc
    (current,) = root.glob("opt/gptoss/*/current")
    assert os.readlink(current) == "releases/6"


def test_a_delta_without_its_base_is_refused_naming_it(delta_dir: Path, carry_v5: Path, carry_v6: Path,
                                                       keys: dict[str, KeyPair], tmp_path: Path) -> None:
    import hashlib

    from gptossctl.bundle.materialize import materialize

    needed = hashlib.sha256((carry_v5 / "manifest.json").read_bytes()).hexdigest()
    with pytest.raises(UsageError) as missing:
        materialize(delta_dir, base=None, scratch=tmp_path / "s", policy=_policy(keys))
    assert missing.value.code == "delta.base_missing" and needed in missing.value.message
    with pytest.raises(CheckFailed) as wrong:
        materialize(delta_dir, base=carry_v6, scratch=tmp_path / "s", policy=_policy(keys))
    assert wrong.value.code == "apply.wrong_base" and needed in wrong.value.message


def test_parts_signed_by_an_untrusted_key_are_not_materialized(carry_parts: Path, keys: dict[str, KeyPair],
                                                              tmp_path: Path) -> None:
    from gptossctl.bundle.materialize import materialize

    with pytest.raises(CheckFailed) as exc:
        materialize(carry_parts, base=None, scratch=tmp_path / "s", policy=_policy(keys, "bob"))
    assert exc.value.code == "join.untrusted"
    assert {f.code for f in exc.value.findings} == {"signature.unknown_signer", "signature.threshold_not_met"}
    assert not list((tmp_path / "s").glob("*"))


def test_materialize_names_a_missing_part(carry_parts: Path, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    import shutil

    from gptossctl.bundle.materialize import materialize

    parts = tmp_path / "parts"
    shutil.copytree(carry_parts, parts)
    gone = part_files(parts)[-1]
    gone.unlink()
    with pytest.raises(CheckFailed) as exc:
        materialize(parts, base=None, scratch=tmp_path / "s", policy=_policy(keys))
    assert [(f.code, f.subject) for f in exc.value.findings] == [("parts.missing", gone.name)]


def test_install_takes_parts_and_a_delta_straight_from_the_command_line(cli: Cli, carry_parts: Path,
                                                                       delta_dir: Path, keys: dict[str, KeyPair],
                                                                       tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, doc = _install(cli, carry_parts, keys, root)
    assert code == 0, doc.get("error")
    assert [s["step"] for s in doc["data"]["steps"]][:4] == ["audit", "materialize", "trust", "verify"]
    # The delta's base is found among the installed releases by its signed manifest digest.
    code, doc = _install(cli, delta_dir, keys, root)
    assert code == 0, doc.get("error")
    (current,) = root.glob("opt/gptoss/*/current")
    assert os.readlink(current) == "releases/6"
    assert not list((root / "opt/gptoss/.incoming").iterdir())  # the rebuilt bundles are gone once installed
    code, doc = _install(cli, delta_dir, keys, tmp_path / "elsewhere")
    assert code == 2 and doc["error"]["code"] == "delta.base_missing" and "v5" in doc["error"]["message"]
