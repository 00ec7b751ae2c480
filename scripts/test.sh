#!/usr/bin/env bash
# Fresh machine -> the whole test suite (unit, CLI and integration against real keys, files, openssl).
# Integration tests mount small tmpfs filesystems: run as root (CI does). Extra args go to pytest.
# --quick: the edit-run loop (unit, cli, hostile, hardware and the staged integration tests): no container, no vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
select=()
if [ "${1:-}" = "--quick" ]; then
  shift
  select=(-m "not heavy")
fi
bash scripts/setup.sh
# The install tests boot a real systemd in a container (systemd-nspawn on a debootstrapped Debian) and
# grade units with systemd-analyze: install those tools where they are missing (Debian/Ubuntu, as root).
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
# The router of several replicas is nginx: `nginx -t` grades its rendered configuration.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
# The SARIF output is validated by Microsoft's SARIF multitool, installed from npm by the tests (cached).
command -v npm >/dev/null || need+=(npm)
# The canary's HTML pages are screenshot with headless Chromium in the tests.
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The code's shape first (seconds): a layering or type error fails the run before the long tests start.
bash scripts/lint.sh
# tests/gpu needs an NVIDIA GPU host and is run there on its own: .venv/bin/python -m pytest tests/gpu
# One worker per core; a module (and its module-scoped container or vLLM) stays on one worker, and the
# heaviest modules are handed out first (tests/conftest.py) so that the long ones overlap.
workers=$(nproc)
[ "$workers" -ge 2 ] || workers=2
# The 40 slowest tests are listed at the end: the record the suite-time budget is kept against.
exec .venv/bin/python -m pytest --ignore=tests/gpu --durations=40 -n "$workers" --dist loadfile --no-loadscope-reorder "${select[@]}" "$@"
