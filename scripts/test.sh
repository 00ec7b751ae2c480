#!/usr/bin/env bash
# Fresh machine -> the whole test suite (unit, CLI and integration against real keys, files, openssl).
# Integration tests mount small tmpfs filesystems: run as root (CI does). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/gpu needs an NVIDIA GPU host and is run there on its own: .venv/bin/python -m pytest tests/gpu
exec .venv/bin/python -m pytest --ignore=tests/gpu "$@"
