#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (all extras used by setup.sh), for every platform and
# Python the project supports, with hashes. Commit the result; scripts/setup.sh installs exactly that.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/uv pip compile pyproject.toml --extra test --extra demo --universal --python-version 3.11 --generate-hashes \
  --no-header -q -o requirements.lock "$@"
# What an air-gapped host installs gptossctl with (the demo and the container tests bootstrap from it).
.venv/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
  --no-header -q -o requirements-runtime.lock "$@"
