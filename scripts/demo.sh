#!/usr/bin/env bash
# Fresh machine -> the whole gptossctl path on a tiny gpt-oss (no GPU, no model download): keys, pack, co-sign,
# verify, tampering refused, hardware check, then install into a booted systemd container and serve it with
# vLLM under the hardened unit: smoke, canary, compliance, a failing upgrade rolled back. Run as root (it boots
# a container); otherwise it runs the quick staged path. Extra arguments go to `gptossctl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
  echo "not root: running the quick staged demo (booting a systemd container needs root)" >&2
  exec .venv/bin/gptossctl demo --staged "$@"
fi
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# vLLM's wheels (downloaded once, about 3.5 GB) and gptossctl's own, for the air-gapped side of the demo.
mapfile -t houses < <(.venv/bin/python scripts/demo_wheels.py)
exec .venv/bin/gptossctl demo --wheelhouse "${houses[0]}" --bootstrap-wheels "${houses[1]}" "$@"
