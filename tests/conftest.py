from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gptossctl.bundle.keys import SigningKey, generate_key, load_signing_key
from gptossctl.demo.tinymodel import write_tiny_model
from gptossctl.pack.pack import pack_bundle
from gptossctl.pack.spec import load_spec
from gptossctl.resources import data_dir

PASSPHRASE = b"correct horse battery staple"
# Real captures and model file lists, copied into the repository with their sources (tests/data/gpu/SOURCES.md,
# tests/data/gpt-oss/FILES.md): a clone of the project alone runs the whole suite.
FIXTURES = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class KeyPair:
    name: str
    private: Path
    public: Path
    keyid: str

    def signer(self) -> SigningKey:
        return load_signing_key(self.private, passphrase=lambda _p: PASSPHRASE)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("alice", "bob", "mallory"):
        g = generate_key(d, name, passphrase=PASSPHRASE)
        out[name] = KeyPair(name, g.private_path, g.public_path, g.keyid)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-gpt-oss")


def pack(out: Path, model: Path, signers: list[KeyPair], **kw: Any) -> Path:
    spec, spec_dir = load_spec(data_dir("bundles") / "tiny-demo.yaml")
    pack_bundle(spec, spec_dir, out, [k.signer() for k in signers], model_dir=model, **kw)
    return out


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, keys: dict[str, KeyPair]) -> Path:
    """A bundle signed by alice, packed once; tests get their own copy through `bundle`."""
    return pack(tmp_path_factory.mktemp("packed") / "bundle", tiny_model, [keys["alice"]], version=5)


@pytest.fixture()
def bundle(packed: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(packed, dst, symlinks=True)
    return dst


@pytest.fixture()
def cli() -> Callable[..., tuple[int, dict[str, Any]]]:
    """Run the real CLI app in-process with --json; return (exit code, result document)."""
    from typer.testing import CliRunner

    from gptossctl.cli.main import app

    def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        runner = CliRunner()
        res = runner.invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
        try:
            doc = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"not one JSON document on stdout: {res.stdout!r} / {res.stderr!r}") from None
        assert doc["schema"] == "gptossctl.result/1"
        assert doc["exit_code"] == res.exit_code
        return res.exit_code, doc

    return invoke


def finding_codes(doc: dict[str, Any]) -> list[str]:
    return [f["code"] for f in doc["findings"]]


def now() -> datetime:
    return datetime.now(UTC)


# The modules that boot containers or serve a real vLLM, longest first (measured: `--durations`, README).
# scripts/test.sh hands whole modules to one worker per core in collection order (pytest-xdist --dist loadfile
# --no-loadscope-reorder): these go first so the long ones overlap, and the many short modules fill the gaps.
HEAVIEST = ("test_fleet_ansible.py", "test_systemd_install.py", "test_demo_full.py", "test_canary_schedule.py",
            "test_scaleout.py", "test_edge_install.py",
            "test_fleet_scripts.py", "test_edge_nginx.py", "test_fleet_kofn.py", "test_harmony.py",
            "test_canary_vllm.py",
            "test_probe_vllm.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
