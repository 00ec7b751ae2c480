"""Where shipped data lives: inside the wheel (`gptossctl/_data`) or, in a checkout, at the repo root."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory of shipped data `name` (profiles, bundles, systemd, schemas)."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped data directory {name!r} not found next to {_PKG}")
