"""What deleting a release gives back, measured from its tree: each inode once (as du counts), and nothing for
a file hard-linked from outside the tree (uv links a venv's files from its cache)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gptossctl.install.releases import measure


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0])


def test_measure_counts_each_inode_once_and_frees_nothing_linked_from_outside(tmp_path: Path) -> None:
    tree = tmp_path / "release"
    (tree / "payload").mkdir(parents=True)
    (tree / "payload/weights").write_bytes(os.urandom(3 * 8192))
    os.link(tree / "payload/weights", tree / "payload/weights-again")  # linked inside: counted once, freed
    cache = tmp_path / "uv-cache"
    cache.mkdir()
    (cache / "shared.so").write_bytes(os.urandom(5 * 8192))
    os.link(cache / "shared.so", tree / "payload/shared.so")  # linked from outside: stays after a delete
    (tree / "escape").symlink_to(cache)  # a link is never followed
    usage = measure(tree)
    assert usage.bytes == _du(tree)
    shared = (cache / "shared.so").stat().st_blocks * 512
    assert usage.freeable == usage.bytes - shared > 0
