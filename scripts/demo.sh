#!/usr/bin/env bash
# Fresh machine -> the whole gptossctl path on the embedded tiny model (no GPU, no model download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gptossctl demo --out "${1:-demo-out}"
