#!/usr/bin/env bash
# Create .venv with gptossctl and its test dependencies, exactly as locked in requirements.lock (uv pip compile
# --universal --generate-hashes; regenerate with scripts/lock.sh). Idempotent; needs only Python >= 3.11 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
uv_pin=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' requirements.lock)
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$uv_pin" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$uv_pin" 2> >(grep -v "^WARNING: Location" >&2)
fi
# Every dependency at its locked version and hash; then gptossctl itself, without resolving anything more.
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python --require-hashes -r requirements.lock
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python --no-deps --no-build-isolation -e .
# Byte-compile our own package too, as an installed wheel is: the CLI must start fast even where
# PYTHONDONTWRITEBYTECODE is set (it is on some build hosts).
.venv/bin/python -m compileall -q gptossctl >/dev/null
# The tests make tiny models with transformers, which needs torch: the CPU build, through pip (uv would
# pick the registry's CUDA build). torch is a test tool here, not a dependency of gptossctl.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2> >(grep -v "^WARNING: Location" >&2)
fi
