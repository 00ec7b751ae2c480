"""Side-by-side releases on real filesystems: hashes re-checked as bytes land, a real disk filling up,
atomic switching, convergence when run again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.verify import TrustPolicy, VerifiedBundle, verify_bundle
from gptossctl.errors import CheckFailed
from gptossctl.install.layout import Layout
from gptossctl.install.release import current_version, installed_versions, switch_current
from gptossctl.install.unpack import unpack_release
from tests.conftest import KeyPair

pytestmark = pytest.mark.integration


def _verified(bundle: Path, keys: dict[str, KeyPair]) -> VerifiedBundle:
    return verify_bundle(bundle, TrustPolicy((load_public_key(keys["alice"].public),)))


def test_unpack_copies_every_file_and_switches_atomically(bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v = _verified(bundle, keys)
    layout = Layout(tmp_path / "root")
    rel = unpack_release(v, layout)
    assert rel == layout.release(5)
    for f in v.manifest.files:
        assert (rel / "payload" / f.path).read_bytes() == (bundle / "payload" / f.path).read_bytes()
    assert (rel / "manifest.dsse.json").is_file()
    assert current_version(layout) is None
    switch_current(layout, 5)
    assert current_version(layout) == 5 and (layout.current / "payload" / "model" / "config.json").is_file()
    # Run again: converges, nothing copied twice, nothing left half-done.
    assert unpack_release(v, layout) == rel and installed_versions(layout) == [5]
    assert not list(layout.releases.glob(".*"))


def test_a_bundle_changed_after_verification_is_not_installed(bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v = _verified(bundle, keys)
    w = bundle / "payload/model/model-00000-of-00001.safetensors"
    data = bytearray(w.read_bytes())
    data[7] ^= 1
    w.write_bytes(bytes(data))
    layout = Layout(tmp_path / "root")
    with pytest.raises(CheckFailed) as exc:
        unpack_release(v, layout)
    assert exc.value.code == "install.bundle_changed"
    assert [f.subject for f in exc.value.findings] == ["payload/model/model-00000-of-00001.safetensors"]
    assert installed_versions(layout) == [] and not list(layout.releases.glob(".*"))


def _tmpfs(path: Path, size: int) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@pytest.fixture()
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Real small filesystems (tmpfs); CI runs as root so these tests are never skipped."""
    made: list[Path] = []
    yield made
    for m in made:
        subprocess.run(["umount", "-l", str(m)], check=True)


def test_disk_too_small_is_refused_before_writing(bundle: Path, keys, tmp_path: Path, mounts) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "small"
    _tmpfs(root, 2 << 20)
    mounts.append(root)
    layout = Layout(root)
    with pytest.raises(CheckFailed) as exc:
        unpack_release(_verified(bundle, keys), layout)
    assert exc.value.code == "install.insufficient_disk" and "GiB free" in exc.value.message
    assert installed_versions(layout) == [] and not list(layout.releases.glob(".*"))


def test_disk_filling_up_mid_unpack_leaves_nothing_behind(bundle: Path, keys, tmp_path: Path, mounts) -> None:  # type: ignore[no-untyped-def]
    v = _verified(bundle, keys)
    # Exactly the payload's size: the free-space check (no margin) passes, but every file takes whole
    # pages, so the real disk runs out part way through the copy.
    root = tmp_path / "exact"
    _tmpfs(root, -(-v.manifest.total_size // 4096) * 4096)
    mounts.append(root)
    layout = Layout(root)
    with pytest.raises(CheckFailed) as exc:
        unpack_release(v, layout, margin=0)
    assert exc.value.code == "install.disk_full" and "nothing was activated" in (exc.value.hint or "")
    assert installed_versions(layout) == [] and not list(layout.releases.glob(".*"))
    assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) == 0  # scratch cleaned


def test_switch_to_a_missing_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckFailed) as exc:
        switch_current(Layout(tmp_path), 9)
    assert exc.value.code == "install.no_release"
