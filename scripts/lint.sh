#!/usr/bin/env bash
# The code's shape, checked: ruff (style and bugs), mypy (strict on the domain packages; see pyproject.toml)
# and import-linter (the layers: cli > demo > compliance > install > probe, pack > adapters > bundle, hardware).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check gptossctl benchmarks scripts tests
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
