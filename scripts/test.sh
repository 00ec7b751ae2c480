#!/usr/bin/env bash
# Fresh machine -> the whole test suite (unit, CLI and integration against real keys, files, openssl).
# Integration tests mount small tmpfs filesystems: run as root (CI does). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
