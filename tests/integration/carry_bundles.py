"""Real bundles for the carry tests: the tiny gpt-oss plus files larger than a part, packed with a small
shard size (so a part size smaller than a file is testable), signed with real Ed25519 keys."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gptossctl.demo.tinymodel import write_tiny_model
from tests.conftest import KeyPair, pack

MiB = 1 << 20
SHARD = 1 * MiB
Cli = Callable[..., tuple[int, dict[str, Any]]]


def big_model(root: Path, sizes: list[int], *, seed: int = 7) -> Path:
    """The tiny model and extra weight files of the given sizes (random bytes, reproducible)."""
    write_tiny_model(root)
    rng = random.Random(seed)
    for i, size in enumerate(sizes):
        (root / f"model-extra-{i}.safetensors").write_bytes(rng.randbytes(size))
    return root


def flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.fixture(scope="session")
def carry_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return big_model(tmp_path_factory.mktemp("carry-model") / "m", [5 * MiB, 5 * MiB + 777, 5 * MiB + 1554])


@pytest.fixture(scope="session")
def carry_v5(tmp_path_factory: pytest.TempPathFactory, carry_model: Path, keys: dict[str, KeyPair]) -> Path:
    """About 16 MiB, 1 MiB shards: three 5 MiB files are each larger than a 3 MiB part."""
    return pack(tmp_path_factory.mktemp("carry-v5") / "b5", carry_model, [keys["alice"]], version=5,
                shard_size=SHARD)


@pytest.fixture(scope="session")
def carry_v6(tmp_path_factory: pytest.TempPathFactory, carry_model: Path, keys: dict[str, KeyPair]) -> Path:
    """v5 with one byte changed in the third shard of one file: one changed shard."""
    model = tmp_path_factory.mktemp("carry-model6") / "m"
    shutil.copytree(carry_model, model)
    flip_bit(model / "model-extra-1.safetensors", 2 * SHARD + 5)
    return pack(tmp_path_factory.mktemp("carry-v6") / "b6", model, [keys["alice"]], version=6, shard_size=SHARD)


@pytest.fixture(scope="session")
def carry_parts(tmp_path_factory: pytest.TempPathFactory, carry_v5: Path) -> Path:
    """carry_v5 split at 3 MiB (through the domain function; the CLI is tested on its own)."""
    from gptossctl.bundle.parts import split_bundle

    out = tmp_path_factory.mktemp("carry-parts") / "parts"
    split_bundle(carry_v5, out, part_size=3 * MiB)
    return out


def part_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(".part"))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def trust(keys: dict[str, KeyPair], name: str = "alice") -> list[str]:
    return ["--trust", str(keys[name].public)]


def console_script() -> str:
    """The real installed entry point (what a user runs), next to this interpreter."""
    import sys

    path = Path(sys.executable).with_name("gptossctl")
    assert path.exists(), f"{path} is missing: run scripts/setup.sh"
    return str(path)


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}
